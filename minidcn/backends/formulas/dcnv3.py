"""DCNv3 / DCNv4 sampling geometry, the scalar formulas shared by numba_cpu and cuda.

The formula is stated over whole arrays in ``backends/reference/dcnv3.py``.  Per output pixel
(oy, ox), group g and kernel point p the kernels of both backends need what does not depend
on the channel (``kernel_point``):

* which kernel tap p is (``kernel_tap``): column i and row j, x-major (p = i kh + j), the
  centre skipped with ``remove_center``;
* where it samples (``sampling_location``):
  y = oy s_h - p_h + c_h + s (j d_h - c_h + dy),  x = ox s_w - p_w + c_w + s (i d_w - c_w + dx);
* the corner and bilinear weights of that location (``formulas/bilinear.py``);
* its modulation (``modulation``): the raw scalar, or with DCNv4's ``softmax=True``
  exp(l_p - top) / total over the group's P logits, top and total from ``modulation_stats``.

In the backward pass, from the corner sums S_i = Σ_c G_c x_c(q_i), ``point_gradients`` writes
the point's offset gradient s m (Σ_i w_dx_i S_i, Σ_i w_dy_i S_i) (``offset_gradient``:
exactly 0 where the sum is 0, even if s m overflows) and modulation gradient Σ_i w_i S_i.
Each function is plain Python; ``numba_cpu`` compiles it with ``for_cpu``, ``cuda`` with
``for_gpu``, the formulas it calls with it (see ``formulas/__init__.py``).
"""

from __future__ import annotations

import math

from .bilinear import bilinear_weights, corner_sum

__all__ = ["channel_layout", "kernel_tap", "sampling_location", "modulation_stats", "modulation",
           "kernel_point", "offset_gradient", "point_gradients"]


def channel_layout(kernel_size, remove_center, packed):
    """(og, mg, ms): group g's offset for point p is channel g·og + 2p (dx) and the next (dy),
    its modulation channel g·mg + ms + p.  DCNv3's two tensors: (2P, P, 0); DCNv4's packed
    offset_mask (``packed``), passed as both: (3P, 3P, 2P).  Called on the host, as is."""
    points = kernel_size[0] * kernel_size[1] - int(remove_center)
    return (3 * points, 3 * points, 2 * points) if packed else (2 * points, points, 0)


def kernel_tap(p, kh, kw, remove_center):
    """(i, j): the column and row of kernel point p, x-major (p = i kh + j); with
    ``remove_center`` the centre tap (kw // 2, kh // 2) is skipped, so the points after it
    move one tap on."""
    if remove_center and p >= (kw // 2) * kh + kh // 2:
        p += 1
    return p // kh, p % kh


def sampling_location(oy, ox, i, j, dx, dy, geometry, scale):
    """(y, x) sampled by output (oy, ox) at kernel point (i, j) moved by offset (dx, dy).

    ``geometry`` is (kh, kw, s_h, s_w, p_h, p_w, d_h, d_w); c_h = d_h (kh - 1) // 2 is the
    kernel centre's row (likewise c_w).  The integer parts are summed first, exactly, then
    the scaled offset is added: y = (oy s_h - p_h + c_h) + s ((j d_h - c_h) + dy).
    """
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ch, cw = (dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2
    y = (oy * sh - ph + ch) + scale * ((j * dh - ch) + dy)
    x = (ox * sw - pw + cw) + scale * ((i * dw - cw) + dx)
    return y, x


def modulation_stats(logits, count, softmax):
    """(top, total) of the softmax over logits[0 : count], top = max_p l_p and
    total = Σ_p exp(l_p - top), so that softmax_p = exp(l_p - top) / total; without softmax
    (0, 1), which ``modulation`` does not use."""
    if not softmax:
        return 0.0, 1.0
    top = logits[0]
    for p in range(1, count):
        if logits[p] > top:  # two-argument max does not compile for CUDA (numba 0.66)
            top = logits[p]
    total = 0.0
    for p in range(count):
        total += math.exp(logits[p] - top)
    return top, total


def modulation(logit, softmax, top, total):
    """The modulation scalar of a point: the raw ``logit``, or exp(logit - top) / total."""
    return math.exp(logit - top) / total if softmax else logit


def kernel_point(p, oy, ox, offsets, logits, geometry, scale, remove_center, height, width,
                 softmax, top, total):
    """``(inside, y0, x0, w, w_dy, w_dx, m)`` of kernel point p of output pixel (oy, ox) in a
    group: ``offsets`` are the group's (dx, dy) pairs (point p's at 2p and 2p + 1),
    ``logits`` its P modulation scalars; the corner and weights are ``bilinear_weights``' on a
    height x width input, ``m`` the point's modulation (``modulation``, with the group's
    ``modulation_stats`` top and total)."""
    i, j = kernel_tap(p, geometry[0], geometry[1], remove_center)
    y, x = sampling_location(oy, ox, i, j, offsets[2 * p], offsets[2 * p + 1], geometry, scale)
    inside, y0, x0, w, w_dy, w_dx = bilinear_weights(y, x, height, width)
    return inside, y0, x0, w, w_dy, w_dx, modulation(logits[p], softmax, top, total)


def offset_gradient(scale, m, slope_sum):
    """s · m · slope_sum, the gradient of offset dx (or dy) of a point with modulation m, and
    exactly 0 where slope_sum is 0: a point that reads 0 (outside the band, or at a NaN,
    infinite or huge location) gets gradient 0 even when s · m overflows to inf, whose
    product with 0 would be NaN (the reference multiplies m into the sum first)."""
    if slope_sum == 0.0:
        return 0.0
    return scale * m * slope_sum


def point_gradients(p, s, m, w, w_dy, w_dx, scale, grad_offsets, grad_logits):
    """Point p's gradients from its corner sums ``s`` = (S_0, ..., S_3): the offset pair
    s m (Σ_i w_dx_i S_i, Σ_i w_dy_i S_i) (``offset_gradient``) into grad_offsets[2p],
    grad_offsets[2p + 1], and the modulation gradient Σ_i w_i S_i into grad_logits[p] (the
    group's views, as in ``kernel_point``)."""
    grad_offsets[2 * p] = offset_gradient(scale, m, corner_sum(w_dx, s))
    grad_offsets[2 * p + 1] = offset_gradient(scale, m, corner_sum(w_dy, s))
    grad_logits[p] = corner_sum(w, s)
