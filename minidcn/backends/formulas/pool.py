"""The pooling window, the scalar formulas shared by the numba_cpu and cuda backends.

The formulas are stated over whole arrays in ``backends/reference/pool.py``: output pixel
(i, j) looks at the window of rows i·s_h - p_h + u·d_h (u < kh) and columns
j·s_w - p_w + v·d_w (v < kw); max pooling keeps the first maximum of a row-major scan (a NaN
replaces it), average pooling sums the window's pixels inside the image.

Each function here is plain Python and calls no other formula; ``numba_cpu`` compiles it
with ``for_cpu`` and ``cuda`` with ``for_gpu`` (see ``formulas/__init__.py``).  Bounds are
written with conditionals, not two-argument max/min: those do not compile on the CUDA target
since numba 0.66 (numba issue 10753), although the simulator accepts them.
"""

from __future__ import annotations

import math

__all__ = ["points_inside", "clipped_span", "window_max", "window_sum"]


def points_inside(start, dilation, kernel, size):
    """[lo, hi): the kernel points u < kernel whose position start + u·d lies in [0, size).

    lo = ceil(-start / d) (or 0), hi = ceil((size - start) / d) (at most kernel).  The scan
    skips the other points (padding): a window far larger than the image costs the image's
    size, as in torch, not the window's.
    """
    lo = -(start // dilation) if start < 0 else 0
    hi = -((start - size) // dilation)
    return lo, hi if hi < kernel else kernel


def clipped_span(start, size, limit):
    """The part [lo, hi) of the span [start, start + size) that lies in [0, limit)."""
    lo = start if start > 0 else 0
    hi = start + size if start + size < limit else limit
    return lo, hi


def window_max(x, b, c, row0, u0, u1, row_step, col0, v0, v1, col_step):
    """(best, row·W + col): the max of x[b, c] over rows row0 + u·row_step (u0 <= u < u1)
    and columns col0 + v·col_step (v0 <= v < v1), scanned row-major.

    A pixel replaces the best when ``value > best or isnan(value)``: the first maximum wins
    ties and a NaN propagates.  With an empty window the result is (-inf, -1).
    """
    width = x.shape[3]
    best, best_index = -math.inf, -1
    for u in range(u0, u1):
        row = row0 + u * row_step
        for v in range(v0, v1):
            col = col0 + v * col_step
            value = x[b, c, row, col]
            if best_index < 0 or value > best or math.isnan(value):
                best, best_index = value, row * width + col
    return best, best_index


def window_sum(x, b, c, row_lo, row_hi, col_lo, col_hi, zero):
    """Σ x[b, c, row, col] over row_lo <= row < row_hi, col_lo <= col < col_hi, row-major,
    starting from ``zero`` (a scalar of the data's dtype, so float32 sums stay float32)."""
    total = zero
    for row in range(row_lo, row_hi):
        for col in range(col_lo, col_hi):
            total += x[b, c, row, col]
    return total
