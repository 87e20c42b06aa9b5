"""Bilinear sampling, written as the formula (reference backend).

A feature map x is defined only at integer pixels q.  Bilinear interpolation extends it to
any real position p = (p_y, p_x):

    x(p) = Σ_q G(q, p) x(q),  G(q, p) = g(q_y, p_y) · g(q_x, p_x),  g(a, b) = max(0, 1 - |a - b|)

g is a "tent": 1 where a = b, falling linearly to 0 one pixel away.  So only the four
integer neighbours of p,

    q ∈ {y0, y0 + 1} × {x0, x0 + 1},    y0 = floor(p_y),  x0 = floor(p_x),

have G ≠ 0, and the sum runs over those four.

Borders.  Outside the image x(q) reads as 0 (zero padding one pixel wide): a point
contributes only when -1 < p_y < H and -1 < p_x < W.  Points are kept when
-1 <= p_y < H and -1 <= p_x < W: on the line p_y = -1 itself every image pixel has G = 0
(the floor row y0 = -1 is padding, row 0 has weight 0), so the value is still 0, but the
one-sided position gradient below is not (at y = -1 + ε the value is ε · x[0, ...]), as
in torchvision.  The test is written as "inside" (``p_y >= -1`` is False for NaN), so NaN,
±inf and huge coordinates sample 0 and receive gradient 0.

Gradient with respect to the position.  g(q_y, p_y) has a kink at p_y = q_y.  We take its
slope on the side of the floor neighbours, d g(q_y, p_y) / d p_y = -1 for q_y = y0 and +1
for q_y = y0 + 1, which gives

    dx(p)/dp_y = Σ_q ±1 · g(q_x, p_x) x(q)
               = (1 - lx)(x[y0+1, x0] - x[y0, x0]) + lx (x[y0+1, x0+1] - x[y0, x0+1]),

with lx = p_x - x0, and the same for p_x.  At an integer coordinate this is the one-sided
difference toward +1 (torchvision's convention).

Shapes: x (B, C, H, W); points (B, P, 2) holding (y, x); out (B, C, P).  Image b samples
its own P points in every channel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bilinear_sample_forward", "bilinear_sample_backward"]

# The four neighbours of p as (y, x) steps from (y0, x0).
NEIGHBOUR_STEPS = ((0, 0), (0, 1), (1, 0), (1, 1))


def tent(a, b):
    """g(a, b) = max(0, 1 - |a - b|): the 1-D bilinear weight of pixel a for position b."""
    return np.maximum(0, 1 - np.abs(a - b))


def interpolation_weight(q, p):
    """G(q, p) = g(q_y, p_y) g(q_x, p_x) for (..., 2) arrays of (y, x) that broadcast."""
    q, p = np.asarray(q), np.asarray(p)
    return tent(q[..., 0], p[..., 0]) * tent(q[..., 1], p[..., 1])


def _neighbours(points, height, width):
    """For each of the four neighbours q of every point, yield what sampling needs.

    Yields ``(flat, G, dG_dy, dG_dx)``, each of shape (B, P):

    * ``flat``: q_y * W + q_x, the index of q in a flattened (H, W) plane (clipped into the
      image where q is outside; G is 0 there);
    * ``G``: G(q, p), already 0 for neighbours outside the image and for points outside
      the band -1 < y < H, -1 < x < W;
    * ``dG_dy``, ``dG_dx``: its derivative with respect to p_y and p_x (floor convention).
    """
    py, px = points[..., 0], points[..., 1]
    inside = (py >= -1) & (py < height) & (px >= -1) & (px < width)  # False for NaN
    # Points outside contribute nothing; park them at 0 so floor() and int casts stay quiet.
    py, px = np.where(inside, py, 0), np.where(inside, px, 0)
    y0, x0 = np.floor(py), np.floor(px)
    for step_y, step_x in NEIGHBOUR_STEPS:
        qy, qx = y0 + step_y, x0 + step_x
        in_image = inside & (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        gy, gx = tent(qy, py), tent(qx, px)
        slope_y, slope_x = 2 * step_y - 1, 2 * step_x - 1  # -1 for the floor side, +1 above
        row = np.clip(qy, 0, height - 1).astype(np.int64)
        column = np.clip(qx, 0, width - 1).astype(np.int64)
        flat = row * width + column
        yield flat, gy * gx * in_image, slope_y * gx * in_image, gy * slope_x * in_image


def _gather(planes, flat):
    """planes (B, C, H*W), flat (B, P) -> planes[b, c, flat[b, p]] as (B, C, P)."""
    return np.take_along_axis(planes, flat[:, None, :], axis=2)


def bilinear_sample_forward(x, points):
    """out[b, c, p] = Σ_q G(q, points[b, p]) x[b, c, q]  (the four neighbours q)."""
    x, points = np.ascontiguousarray(x), np.ascontiguousarray(points)
    batch, channels, height, width = x.shape
    planes = x.reshape(batch, channels, height * width)
    out = np.zeros((batch, channels, points.shape[1]), dtype=x.dtype)
    for flat, weight, _, _ in _neighbours(points, height, width):
        out += weight[:, None, :] * _gather(planes, flat)
    return out


def position_gradient(x, points):
    """dx_c(p)/dp: how each channel's sampled value moves with the point, shape (2, B, C, P).

    [0] = dx(p)/dp_y = Σ_q dG(q, p)/dp_y · x[b, c, q]
        = (1 - lx)(x[y0+1, x0] - x[y0, x0]) + lx (x[y0+1, x0+1] - x[y0, x0+1])
    [1] = dx(p)/dp_x, the same with y and x swapped (floor convention, see above).
    """
    batch, channels, height, width = x.shape
    planes = np.ascontiguousarray(x).reshape(batch, channels, height * width)
    gradient = np.zeros((2, batch, channels, points.shape[1]), dtype=x.dtype)
    for flat, _, d_dy, d_dx in _neighbours(np.ascontiguousarray(points), height, width):
        value = _gather(planes, flat)  # x[b, c, q], (B, C, P)
        gradient[0] += d_dy[:, None, :] * value
        gradient[1] += d_dx[:, None, :] * value
    return gradient


def scatter_to_neighbours(grad_out, shape, points):
    """grad_x[b, c, q] = Σ_p G(q, points[b, p]) grad_out[b, c, p], as an array of ``shape``.

    The transpose of sampling: each point hands its gradient back to its four neighbours,
    weighted as it read them (``np.add.at`` adds every term, also where points share q).
    """
    batch, channels, height, width = shape
    grad_planes = np.zeros((batch, channels, height * width), dtype=grad_out.dtype)
    image = np.arange(batch)[:, None, None]
    channel = np.arange(channels)[None, :, None]
    for flat, weight, _, _ in _neighbours(np.ascontiguousarray(points), height, width):
        np.add.at(grad_planes, (image, channel, flat[:, None, :]), weight[:, None, :] * grad_out)
    return grad_planes.reshape(shape)


def bilinear_sample_backward(grad_out, x, points):
    """Gradients of L = Σ grad_out · out with respect to x and to the points.

    grad_x[b, c, q]   = Σ_p G(q, p) grad_out[b, c, p]             (``scatter_to_neighbours``)
    grad_points[b, p] = Σ_c grad_out[b, c, p] · dx_c(p)/dp         (``position_gradient``)
    """
    grad_out = np.ascontiguousarray(grad_out, dtype=x.dtype)
    grad_x = scatter_to_neighbours(grad_out, x.shape, points)
    grad_points = np.einsum("bcp,dbcp->bpd", grad_out, position_gradient(x, points))
    return grad_x, grad_points
