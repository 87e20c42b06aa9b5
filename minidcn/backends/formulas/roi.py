"""The scalar formulas of the RoI family, written once for the numba and cuda backends.

Each function is plain Python of scalars (``backends/reference/roi_pool.py`` states the
same conventions over whole arrays, with the reasons behind them); ``numba_cpu/roi_pool.py``
compiles them with ``for_cpu`` and ``cuda/roi_pool.py`` with ``for_gpu``, with the
formulas they call (``sample_corners`` is built from the ones before it).  No
two-argument ``max``/``min``: they do not compile for the CUDA target (see
``tests/test_cuda_compiles.py``); clips are comparisons.

roi_pool (whole pixels)::

    x1' = round(clip(x1 * spatial_scale, -2**31, 2**31))      C's round: halves away from 0
    roi_w = max(x2' - x1' + 1, 1)
    bin (i, j) covers rows [y1' + floor(i bin_h), y1' + ceil((i + 1) bin_h)) clipped to [0, H]

Sampled poolings (roi_align, deformable, position-sensitive), with shift = 0.5 if aligned::

    x_start = x1 * spatial_scale - shift,    roi_w = (x2 * spatial_scale - shift) - x_start
    roi_w >= 1 when not aligned (torchvision's legacy RoIAlign)
    grid_w = sampling_ratio if > 0, else max(ceil(roi_w / pw), 0) (0 for a non-finite size)
    x = (x_start + gamma roi_w offset_x) + j bin_w + (ix + 0.5) bin_w / grid_w

and each sample is read by torchvision's bilinear rule: nothing outside
``-1 <= y <= H, -1 <= x <= W``; inside, y <= 0 reads row 0 and past the last row centre both
rows are H - 1, with weights ``(1 - ly)(1 - lx), (1 - ly) lx, ly (1 - lx), ly lx``.
"""

from __future__ import annotations

import math

import numpy as np

INT_LIMIT = 2.0**31
FLT_MAX = float(np.finfo(np.float32).max)  # where roi_pool's scan starts, as in torchvision


def pixel_edge(v):
    """A scaled box coordinate as a whole pixel: clipped to +-2**31, then C's round()
    (halves away from zero)."""
    v = -INT_LIMIT if v < -INT_LIMIT else (INT_LIMIT if v > INT_LIMIT else v)
    a = abs(v)
    whole = math.floor(a)
    return int(math.copysign(whole + (1.0 if a - whole >= 0.5 else 0.0), v))


def pixel_size(start, end):
    """roi_pool's box size from its rounded edges: end - start + 1, at least 1."""
    size = end - start + 1
    return size if size > 1 else 1


def any_nan(a, b, c, d):
    """Whether any of four scalars is NaN (roi_pool's unusable box)."""
    return math.isnan(a) or math.isnan(b) or math.isnan(c) or math.isnan(d)


def pixel_range(start, lo_edge, hi_edge, limit):
    """Rows (or columns) [lo, hi) of a bin with edges lo_edge, hi_edge: start + floor(lo_edge),
    start + ceil(hi_edge), each clipped to [0, limit]."""
    lo = start + int(math.floor(lo_edge))
    hi = start + int(math.ceil(hi_edge))
    lo = 0 if lo < 0 else (limit if lo > limit else lo)
    hi = 0 if hi < 0 else (limit if hi > limit else hi)
    return lo, hi


def window_max(plane, h0, h1, w0, w1):
    """roi_pool's bin: the maximum of plane[h0:h1, w0:w1] and its flat index h W + w.

    Rows then columns from -FLT_MAX, keeping the first maximum (strict >), so a window
    holding only NaN or values <= -FLT_MAX gives (-FLT_MAX, -1), as in torchvision.
    """
    best, where = -FLT_MAX, -1
    for h in range(h0, h1):
        for w in range(w0, w1):
            if plane[h, w] > best:
                best, where = plane[h, w], h * plane.shape[1] + w
    return best, where


def roi_geometry(x1, y1, x2, y2, ph, pw, spatial_scale, sampling_ratio, aligned):
    """(y_start, x_start, roi_h, roi_w, grid_h, grid_w) of a RoI with box corners (x1, y1),
    (x2, y2) in image coordinates, in feature-map pixels, for the sampled poolings::

        x_start = x1 * spatial_scale - shift,   roi_w = (x2 * spatial_scale - shift) - x_start
        roi_w >= 1 when not aligned (a NaN size stays NaN)
        grid_w = sampling_ratio if > 0, else max(ceil(roi_w / pw), 0) (0 for a non-finite size)

    (likewise along y), with shift = 0.5 when aligned and 0 otherwise.
    """
    shift = 0.5 if aligned else 0.0
    x_start = x1 * spatial_scale - shift
    y_start = y1 * spatial_scale - shift
    roi_w = (x2 * spatial_scale - shift) - x_start
    roi_h = (y2 * spatial_scale - shift) - y_start
    if not aligned:
        roi_w = 1.0 if roi_w < 1.0 else roi_w
        roi_h = 1.0 if roi_h < 1.0 else roi_h
    grid_h, grid_w = sampling_ratio, sampling_ratio
    if sampling_ratio <= 0:
        grid_h = int(math.ceil(roi_h / ph)) if math.isfinite(roi_h) else 0
        grid_w = int(math.ceil(roi_w / pw)) if math.isfinite(roi_w) else 0
    return (y_start, x_start, roi_h, roi_w, (grid_h if grid_h > 0 else 0),
            (grid_w if grid_w > 0 else 0))


def sample_count(grid_h, grid_w):
    """What a bin's sum is divided by: grid_h grid_w samples, at least 1."""
    n = grid_h * grid_w
    return n if n > 1 else 1


def sample_coord(start, roi_size, offset, gamma, index, pooled, sub, grid):
    """Sample ``sub`` of ``grid`` along one axis of bin ``index`` of ``pooled``, the bin
    moved by gamma * offset * roi_size::

        (start + gamma roi_size offset) + index bin + (sub + 0.5) bin / grid

    with bin = roi_size / pooled.
    """
    bin_size = roi_size / pooled
    return ((start + gamma * roi_size * offset) + index * bin_size) + (sub + 0.5) * bin_size / grid


def inside_band(y, x, height, width):
    """Whether (y, x) is read at all: -1 <= y <= H and -1 <= x <= W (NaN is not)."""
    return y >= -1.0 and y <= height and x >= -1.0 and x <= width


def axis_corners(v, size):
    """Along one axis, for v inside the band: the two neighbours of v (v <= 0 read as 0,
    both size - 1 past the last pixel centre) and the fraction l of the way to the second."""
    v = v if v > 0.0 else 0.0
    low = int(v)
    if low >= size - 1:
        return size - 1, size - 1, 0.0
    return low, low + 1, v - low


def corner_weights(ly, lx):
    """The bilinear weights of corners (y0, x0), (y0, x1), (y1, x0), (y1, x1)."""
    hy, hx = 1.0 - ly, 1.0 - lx
    return hy * hx, hy * lx, ly * hx, ly * lx


def sample_corners(y, x, height, width):
    """``(inside, y0, y1, x0, x1, w)`` of a sample at (y, x) by torchvision's rule: whether it
    is read at all (``inside_band``), its corner rows and columns (``axis_corners``) and the
    weights ``w`` of corners (y0, x0), (y0, x1), (y1, x0), (y1, x1) (``corner_weights``);
    outside, zeros."""
    if not inside_band(y, x, height, width):
        return False, 0, 0, 0, 0, (0.0, 0.0, 0.0, 0.0)
    y0, y1, ly = axis_corners(y, height)
    x0, x1, lx = axis_corners(x, width)
    return True, y0, y1, x0, x1, corner_weights(ly, lx)


def bilinear_value(w00, w01, w10, w11, v00, v01, v10, v11):
    """sum_n w_n v_n over the four corners."""
    return w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11


def position_slopes(y1_minus_y, y_minus_y0, x1_minus_x, x_minus_x0, v00, v01, v10, v11):
    """mmcv's (dv/dx, dv/dy) of one sample, from its unclamped (y, x) and clamped corners::

        dv/dx ~ (y1 - y) (v01 - v00) + (y - y0) (v11 - v10)
        dv/dy ~ (x1 - x) (v10 - v00) + (x - x0) (v11 - v01)
    """
    return (y1_minus_y * (v01 - v00) + y_minus_y0 * (v11 - v10),
            x1_minus_x * (v10 - v00) + x_minus_x0 * (v11 - v01))


def channel(c, i, j, ph, pw, position_sensitive):
    """Input channel read by bin (i, j) of output channel c: (c ph + i) pw + j when
    position-sensitive, else c."""
    return (c * ph + i) * pw + j if position_sensitive else c
