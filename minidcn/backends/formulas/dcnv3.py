"""DCNv3 / DCNv4 sampling geometry, the scalar formulas shared by numba_cpu and cuda.

The formula is stated over whole arrays in ``backends/reference/dcnv3.py``.  Per output pixel
(oy, ox), group g and kernel point p the kernels need:

* where kernel point p, column i and row j (the kernels walk i in the outer loop and j in
  the inner one: x-major, the centre skipped with ``remove_center``), samples
  (``sampling_location``):
  y = oy s_h - p_h + c_h + s (j d_h - c_h + dy),  x = ox s_w - p_w + c_w + s (i d_w - c_w + dx);
* its modulation: the raw scalar, or with DCNv4's ``softmax=True`` exp(l_p - top) / total
  over the group's P logits, top and total from ``softmax_stats``.

The bilinear weights of the location come from ``formulas/bilinear.py``.  Each function is
plain Python; ``numba_cpu`` compiles it with ``for_cpu``, ``cuda`` with ``for_gpu``.
"""

from __future__ import annotations

import math

__all__ = ["sampling_location", "softmax_stats"]


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


def softmax_stats(logits, start, count):
    """(top, total) of the softmax over logits[start : start + count]:
    top = max_p l_p and total = Σ_p exp(l_p - top), so that softmax_p = exp(l_p - top) / total."""
    top = logits[start]
    for p in range(1, count):
        if logits[start + p] > top:  # two-argument max does not compile for CUDA (numba 0.66)
            top = logits[start + p]
    total = 0.0
    for p in range(count):
        total += math.exp(logits[start + p] - top)
    return top, total
