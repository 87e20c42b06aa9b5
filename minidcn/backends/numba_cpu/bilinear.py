"""Bilinear sampling with Numba loops (numba_cpu backend).

The formula and its conventions are in ``backends/reference/bilinear.py``:

    x(p) = Σ_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|),

summed over the four integer neighbours of p, with zero padding one pixel wide and the
floor-based (one-sided toward +1) position gradient.

:func:`bilinear_weights` is the one place this backend turns a point into its corner and
weights; the deformable convolution (``deform_conv.py``) calls it too, and the cuda backend
compiles the same source (with :func:`interpolate` and :func:`read_pixel`) as device
functions.  Everything that depends only on the point is computed once per point, outside
the loop over channels.

Parallel loops and races.  The forward pass gives each thread whole points (it owns
out[b, :, p]).  The backward pass scatters into grad_x, so a thread owns a whole image b:
grad_x[b] and grad_points[b] are written by that thread alone, in a fixed order, so the
result is bitwise the same for any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["bilinear_sample_forward", "bilinear_sample_backward"]


@njit(cache=True)
def bilinear_weights(y, x, height, width):
    """The corner and the bilinear weights of the point (y, x) in a height x width image.

    Returns ``(inside, y0, x0, w, w_dy, w_dx)``:

    * ``inside``: the point lies in the band -1 <= y < height, -1 <= x < width (written as
      "inside", so NaN, ±inf and huge coordinates are outside: they sample 0 and get
      gradient 0).  Outside, y0 = x0 = 0 and every weight is 0.  On the line y = -1 itself
      the sampled value is 0 (its floor row is padding, row 0 has weight 0) but the
      one-sided gradient toward +1 is not, as in torchvision and the reference backend;
    * ``y0, x0 = floor(y), floor(x)``: the top-left neighbour; the four neighbours, in the
      order used by every tuple below, are (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1);
    * ``w``: G(q, p) for the four neighbours, with ly = y - y0 and lx = x - x0,
      ((1-ly)(1-lx), (1-ly) lx, ly (1-lx), ly lx);
    * ``w_dy, w_dx``: the derivatives of those weights with respect to y and x (floor
      convention: the slope on the side of y0), (-(1-lx), -lx, 1-lx, lx) and
      (-(1-ly), 1-ly, -ly, ly), so that d x(p) / d p_y = Σ_i w_dy[i] x(q_i).

    A neighbour outside the image reads as 0 (zero padding), so its three weights are 0.
    Only after the inside test are the coordinates converted to integers.
    """
    if not (y >= -1.0 and y < height and x >= -1.0 and x < width):
        nothing = (0.0, 0.0, 0.0, 0.0)
        return False, 0, 0, nothing, nothing, nothing
    fy = math.floor(y)
    fx = math.floor(x)
    ly = y - fy
    lx = x - fx
    y0 = int(fy)
    x0 = int(fx)
    top = 1.0 if y0 >= 0 else 0.0  # row y0 is inside the image
    bottom = 1.0 if y0 + 1 < height else 0.0  # row y0 + 1 is inside
    left = 1.0 if x0 >= 0 else 0.0
    right = 1.0 if x0 + 1 < width else 0.0
    in00, in01, in10, in11 = top * left, top * right, bottom * left, bottom * right
    w = (in00 * (1.0 - ly) * (1.0 - lx), in01 * (1.0 - ly) * lx,
         in10 * ly * (1.0 - lx), in11 * ly * lx)
    w_dy = (-in00 * (1.0 - lx), -in01 * lx, in10 * (1.0 - lx), in11 * lx)
    w_dx = (-in00 * (1.0 - ly), in01 * (1.0 - ly), -in10 * ly, in11 * ly)
    return True, y0, x0, w, w_dy, w_dx


@njit(cache=True)
def read_pixel(x, n, c, qy, qx):
    """x[n, c, qy, qx], or 0 when (qy, qx) is outside the image (zero padding)."""
    if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
        return x[n, c, qy, qx]
    return 0.0


@njit(cache=True)
def interpolate(x, n, c, y0, x0, w):
    """Σ_i w_i x[n, c, q_i] over the four neighbours q_i of (y0, x0), reading 0 outside the image."""
    total = 0.0
    for i in range(4):  # neighbour i is (y0 + i // 2, x0 + i % 2)
        qy, qx = y0 + i // 2, x0 + i % 2
        if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
            total += w[i] * x[n, c, qy, qx]
    return total


@njit(cache=True, parallel=True)
def _sample(x, points, out):
    """out[b, c, p] = Σ_i w_i x[b, c, q_i]; one thread per point (b, p), looping over channels."""
    n_points = points.shape[1]
    for t in prange(points.shape[0] * n_points):
        b, p = t // n_points, t % n_points
        inside, y0, x0, w, _, _ = bilinear_weights(points[b, p, 0], points[b, p, 1], x.shape[2], x.shape[3])
        for c in range(x.shape[1]):
            out[b, c, p] = interpolate(x, b, c, y0, x0, w) if inside else 0.0


@njit(cache=True, parallel=True)
def _sample_backward(grad_out, x, points, grad_x, grad_points):
    """Scatter grad_out into grad_x and reduce it into grad_points; one thread per image b.

    grad_x[b, c, q_i] += w_i grad_out[b, c, p]
    S_i = Σ_c grad_out[b, c, p] x[b, c, q_i]            (the gradient reaching corner i)
    grad_points[b, p] = (Σ_i w_dy_i S_i, Σ_i w_dx_i S_i)
    """
    n_points = points.shape[1]
    for b in prange(points.shape[0]):
        for p in range(n_points):
            inside, y0, x0, w, w_dy, w_dx = bilinear_weights(
                points[b, p, 0], points[b, p, 1], x.shape[2], x.shape[3])
            s00, s01, s10, s11 = 0.0, 0.0, 0.0, 0.0
            if inside:
                for c in range(x.shape[1]):
                    g = grad_out[b, c, p]
                    s00 += g * read_pixel(x, b, c, y0, x0)
                    s01 += g * read_pixel(x, b, c, y0, x0 + 1)
                    s10 += g * read_pixel(x, b, c, y0 + 1, x0)
                    s11 += g * read_pixel(x, b, c, y0 + 1, x0 + 1)
                    for i in range(4):  # neighbour i is (y0 + i // 2, x0 + i % 2)
                        qy, qx = y0 + i // 2, x0 + i % 2
                        if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
                            grad_x[b, c, qy, qx] += w[i] * g
            grad_points[b, p, 0] = w_dy[0] * s00 + w_dy[1] * s01 + w_dy[2] * s10 + w_dy[3] * s11
            grad_points[b, p, 1] = w_dx[0] * s00 + w_dx[1] * s01 + w_dx[2] * s10 + w_dx[3] * s11


def bilinear_sample_forward(x, points):
    """out[b, c, p] = Σ_q G(q, points[b, p]) x[b, c, q]; x (B, C, H, W), points (B, P, 2)."""
    x, points = np.ascontiguousarray(x), np.ascontiguousarray(points)
    out = np.empty((x.shape[0], x.shape[1], points.shape[1]), dtype=x.dtype)
    _sample(x, points, out)
    return out


def bilinear_sample_backward(grad_out, x, points):
    """(grad_x, grad_points) of L = Σ grad_out · out (see ``_sample_backward``)."""
    grad_out = np.ascontiguousarray(grad_out)
    x, points = np.ascontiguousarray(x), np.ascontiguousarray(points)
    grad_x = np.zeros_like(x)
    grad_points = np.empty(points.shape, dtype=x.dtype)
    _sample_backward(grad_out, x, points, grad_x, grad_points)
    return grad_x, grad_points
