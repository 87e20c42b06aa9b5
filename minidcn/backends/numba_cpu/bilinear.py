"""Bilinear sampling with Numba loops (numba_cpu backend).

The formula and its conventions are in ``backends/reference/bilinear.py``:

    x(p) = Σ_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|),

summed over the four integer neighbours of p, with zero padding one pixel wide and the
floor-based (one-sided toward +1) position gradient.

The scalar formulas (the corner and weights of a point, their derivatives, the corner reads
and the corner sums of the position gradient) are written once in ``formulas/bilinear.py``
and compiled here with ``for_cpu``; the deformable convolution (``deform_conv.py``) uses them
too, and the cuda backend compiles the same source for the GPU.  Everything that depends
only on the point is computed once per point, outside the loop over channels.

Parallel loops and races.  The forward pass gives each thread whole points (it owns
out[b, :, p]).  The backward pass scatters into grad_x, so a thread owns a whole image b
(where the cuda kernels give each point a thread and scatter with atomics):
grad_x[b] and grad_points[b] are written by that thread alone, in a fixed order, so the
result is bitwise the same for any number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import bilinear as formulas
from ..formulas import for_cpu

__all__ = ["bilinear_sample_forward", "bilinear_sample_backward"]

bilinear_weights = for_cpu(formulas.bilinear_weights)
interpolate = for_cpu(formulas.interpolate)
add_corner_products = for_cpu(formulas.add_corner_products)
corner_sum = for_cpu(formulas.corner_sum)


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

    The corner and weights of every point of the image are computed once, in a first loop;
    the second runs over channels outermost and points inside, so the thread reads
    grad_out[b, c] in order and scatters into one plane grad_x[b, c] at a time while it is
    in cache.  Each pixel still receives its terms in point order and each S_i sums its
    channels in order: the numbers are those of a point-by-point loop, bit for bit.
    """
    n_images, n_channels, height, width = x.shape
    n_points = points.shape[1]
    for b in prange(n_images):
        inside = np.zeros(n_points, np.bool_)
        corner = np.zeros((n_points, 2), np.int64)
        w = np.zeros((n_points, 4))
        sums = np.zeros((n_points, 4))
        slopes = np.zeros((n_points, 2, 4))
        for p in range(n_points):
            inside[p], corner[p, 0], corner[p, 1], w_p, slopes_y, slopes_x = bilinear_weights(
                points[b, p, 0], points[b, p, 1], height, width)
            for i in range(4):
                w[p, i], slopes[p, 0, i], slopes[p, 1, i] = w_p[i], slopes_y[i], slopes_x[i]
        for c in range(n_channels):
            for p in range(n_points):
                if not inside[p]:
                    continue
                g, y0, x0 = grad_out[b, c, p], corner[p, 0], corner[p, 1]
                s = add_corner_products((sums[p, 0], sums[p, 1], sums[p, 2], sums[p, 3]),
                                        g, x, b, c, y0, x0)
                for i in range(4):  # neighbour i is (y0 + i // 2, x0 + i % 2)
                    sums[p, i] = s[i]
                    qy, qx = y0 + i // 2, x0 + i % 2
                    if 0 <= qy < height and 0 <= qx < width:
                        grad_x[b, c, qy, qx] += w[p, i] * g
        for p in range(n_points):
            s = (sums[p, 0], sums[p, 1], sums[p, 2], sums[p, 3])
            grad_points[b, p, 0] = corner_sum((slopes[p, 0, 0], slopes[p, 0, 1], slopes[p, 0, 2],
                                               slopes[p, 0, 3]), s)
            grad_points[b, p, 1] = corner_sum((slopes[p, 1, 0], slopes[p, 1, 1], slopes[p, 1, 2],
                                               slopes[p, 1, 3]), s)


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
