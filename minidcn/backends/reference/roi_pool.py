"""RoI pooling in plain NumPy: RoIPool, RoIAlign, deformable RoI pooling (plain, modulated,
position-sensitive).  Written to be read beside the formulas below; the oracle for the
``numba_cpu`` and ``cuda`` backends, which export the same kernels::

    roi_pool_forward(x, rois, output_size, spatial_scale) -> (y, argmax)
    roi_pool_backward(grad_y, argmax, rois, input_shape) -> grad_x
    sampled_roi_forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, aligned, position_sensitive) -> y
    sampled_roi_backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale,
                         sampling_ratio, gamma, aligned, position_sensitive)
        -> (grad_x, grad_offset, grad_mask)

The second pair is roi_align, deform_roi_pool and deform_ps_roi_pool at once: one sampling
computation with switches (below).  Each op's Function in ``functional/roi.py`` sets them:
roi_align passes no offset (zeros), no mask (ones), gamma = 0 and its own ``aligned``; the
deformable poolings are always aligned and differ in ``position_sensitive`` (there is no
mask then).  Backward returns None for grad_offset and grad_mask when x is None (roi_align
needs only the input gradient); an absent mask is read as ones and still gets a gradient,
which the Function drops.

Shapes: x (B, C, H, W); rois (K, 5) rows [batch_index, x1, y1, x2, y2] in image
coordinates, of x's dtype, batch indices already checked to be integers in [0, B);
output_size (ph, pw); offset (K, 2, ph, pw) with channel 0 = x, 1 = y; mask (K, 1, ph, pw)
or None (then grad_mask is None); y (K, C_out, ph, pw); argmax int64 (K, C, ph, pw), the
flat index h * W + w of the winner in its (H, W) plane, -1 for none.

roi_pool (torchvision's numbers)
--------------------------------
The box is rounded to whole pixels, ``x1' = round(x1 * spatial_scale)`` with C's rounding
(halves away from zero), and is at least 1 x 1: ``roi_w = max(x2' - x1' + 1, 1)``.  Bin
(i, j) covers rows ``[y1' + floor(i roi_h / ph), y1' + ceil((i + 1) roi_h / ph))`` (and the
same for columns), clipped to the image.  The output is the bin's maximum (the first one
on ties, scanning rows then columns); an empty bin gives 0 and argmax -1.  The scan starts
from -FLT_MAX, so a bin holding only NaN or values <= -FLT_MAX gives -FLT_MAX and argmax
-1, as in torchvision.  The gradient goes to the argmax.  A RoI with a NaN coordinate has
only empty bins; scaled coordinates beyond +-2**31 are clipped there (torchvision converts
them to a C int, which is undefined).

Bin sampling: roi_align and the deformable poolings (one routine, ``_bin_samples``)
---------------------------------------------------------------------------------
Box in feature-map pixels, with ``shift = 0.5`` when aligned and 0 otherwise::

    x_start = x1 * spatial_scale - shift,   roi_w = (x2 * spatial_scale - shift) - x_start

(likewise y).  Without ``aligned`` the size is forced to at least 1 (torchvision's legacy
RoIAlign); the deformable poolings are always aligned (mmcv: start ``x1 * scale - 0.5``, no
minimum size).  Bins have size ``bin_w = roi_w / pw``.  The sampling grid has
``grid_w = sampling_ratio`` points across a bin, or ``ceil(roi_w / pw)`` when
``sampling_ratio <= 0``, never below 0: with that adaptive grid an inverted aligned box
(x2 < x1) has no samples and pools to 0 (torchvision's CPU kernel raises on it), and a RoI
with a non-finite size has none either.  Sample (iy, ix) of bin (i, j) sits at::

    y = (y_start + gamma * roi_h * offset[k, 1, i, j]) + i * bin_h + (iy + 0.5) * bin_h / grid_h
    x = (x_start + gamma * roi_w * offset[k, 0, i, j]) + j * bin_w + (ix + 0.5) * bin_w / grid_w

so the normalised offset moves the whole bin by gamma * offset * (roi_w, roi_h) (the DCN
paper's delta p = gamma * delta p_hat * (w, h)).  roi_align is this with zero offsets:
adding 0.0 changes no bit, so deform_roi_pool with zero offsets equals
roi_align(aligned=True) exactly.  Each sample is read by torchvision's bilinear rule
(``_bilinear_corners``): outside ``-1 <= y <= H, -1 <= x <= W`` (NaN included) it reads 0;
otherwise y <= 0 becomes 0, and when ``floor(y) >= H - 1`` both rows become H - 1 (same
for x), then ``v = hy hx v(y0, x0) + hy lx v(y0, x1) + ly hx v(y1, x0) + ly lx v(y1, x1)``
with ``ly = y - y0``, ``hy = 1 - ly``.  The output is the mean over the grid,
``sum / max(grid_h * grid_w, 1)``, times ``mask[k, 0, i, j]`` when modulated (DCNv2; mmcv
multiplies the pooled value by the mask).  A RoI with a NaN or infinite coordinate
therefore pools to 0 and gets no gradient; so does a sample moved to NaN by its offset.

Position-sensitive (the paper's R-FCN variant): x has C_out * ph * pw channels and bin
(i, j) of output channel c reads input channel ``(c * ph + i) * pw + j`` (with ph = pw = k:
``(c k + i) k + j``).  Geometry, offsets (one (dx, dy) per bin, shared by all output
channels, i.e. class-agnostic) and sampling are those of deform_roi_pool; there is no mask.

Gradients
---------
* Input: each sample scatters ``grad * mask / count * w_n`` to its four corners.
* Mask: ``grad_mask[k, 0, i, j] = sum_c grad[k, c, i, j] * pooled[k, c, i, j]`` (the
  unmodulated mean).
* Offset, as mmcv computes it: with the sample's own (unclamped) y, x and the clamped
  corner rows y0, y1 and columns x0, x1::

      dv/dx ~ (y1 - y) (v(y0, x1) - v(y0, x0)) + (y - y0) (v(y1, x1) - v(y1, x0))
      dv/dy ~ (x1 - x) (v(y1, x0) - v(y0, x0)) + (x - x0) (v(y1, x1) - v(y0, x1))

      grad_offset[k, 0, i, j] = gamma roi_w sum_c sum_samples grad * mask / count * dv/dx
      grad_offset[k, 1, i, j] = gamma roi_h sum_c sum_samples grad * mask / count * dv/dy

  Inside [0, H - 1) x [0, W - 1) this is the derivative of the bilinear formula.  In the
  border band it is not: for x in [-1, 0] the forward is flat in x, yet dv/dx is the slope
  between columns 0 and 1; for x >= W - 1 both columns are W - 1 and dv/dx = 0; for y in
  [-1, 0) the row weights extrapolate (1 - y and y); for y >= H - 1 both rows are H - 1
  and the two terms cancel, so dv/dx = 0.  Outside the band a sample gives no gradient.
"""

from __future__ import annotations

import math

import numpy as np


__all__ = ["roi_pool_forward", "roi_pool_backward", "sampled_roi_forward",
           "sampled_roi_backward"]

FLT_MAX = float(np.finfo(np.float32).max)
INT_LIMIT = 2.0**31


# ---------------------------------------------------------------------------- roi_pool
def _round_half_away(v: float) -> float:
    """C's round(): halves go away from zero (numpy's round goes to even)."""
    a = abs(v)
    whole = math.floor(a)
    return math.copysign(whole + (a - whole >= 0.5), v)


def _pixel_box(roi, spatial_scale):
    """Rounded (y_start, x_start, roi_h, roi_w) in whole pixels, or None for a NaN box."""
    scaled = [roi[n] * spatial_scale for n in (1, 2, 3, 4)]
    if any(math.isnan(v) for v in scaled):
        return None
    x1, y1, x2, y2 = (int(_round_half_away(min(max(v, -INT_LIMIT), INT_LIMIT))) for v in scaled)
    return y1, x1, max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)


def _pixel_range(start, index, bin_size, limit):
    """Rows (or columns) [lo, hi) of bin ``index``: floor / ceil of the bin edges, clipped."""
    lo = start + math.floor(index * bin_size)
    hi = start + math.ceil((index + 1) * bin_size)
    return min(max(lo, 0), limit), min(max(hi, 0), limit)


def roi_pool_forward(x, rois, output_size, spatial_scale):
    x = np.ascontiguousarray(x)
    rois = np.ascontiguousarray(rois)
    (_, C, H, W), (ph, pw), K = x.shape, output_size, rois.shape[0]
    dtype = x.dtype.type
    y = np.zeros((K, C, ph, pw), x.dtype)
    argmax = np.full((K, C, ph, pw), -1, np.int64)
    for k in range(K):
        box = _pixel_box(rois[k], dtype(spatial_scale))
        if box is None:
            continue
        b = int(rois[k, 0])
        y_start, x_start, roi_h, roi_w = box
        bin_h, bin_w = dtype(roi_h) / dtype(ph), dtype(roi_w) / dtype(pw)  # in x's precision
        for i in range(ph):
            h0, h1 = _pixel_range(y_start, i, bin_h, H)
            for j in range(pw):
                w0, w1 = _pixel_range(x_start, j, bin_w, W)
                if h1 <= h0 or w1 <= w0:
                    continue  # empty bin: 0, argmax -1
                window = x[b, :, h0:h1, w0:w1].reshape(C, -1)
                candidate = np.where(window > -FLT_MAX, window, -np.inf)  # NaN never wins
                first = np.argmax(candidate, axis=1)  # first maximum, row-major
                found = candidate[np.arange(C), first] > -np.inf
                rows, cols = h0 + first // (w1 - w0), w0 + first % (w1 - w0)
                y[k, :, i, j] = np.where(found, candidate[np.arange(C), first], -FLT_MAX)
                argmax[k, :, i, j] = np.where(found, rows * W + cols, -1)
    return y, argmax


def roi_pool_backward(grad_y, argmax, rois, input_shape):
    grad_y = np.ascontiguousarray(grad_y)
    B, C, H, W = input_shape
    grad_x = np.zeros((B, C, H * W), grad_y.dtype)
    for k in range(grad_y.shape[0]):
        b = int(rois[k, 0])
        for c in range(C):
            won = argmax[k, c] >= 0
            np.add.at(grad_x[b, c], argmax[k, c][won], grad_y[k, c][won])
    return grad_x.reshape(input_shape)


# ---------------------------------------------------------------------------- sampling
def _box(roi, spatial_scale, aligned):
    """(y_start, x_start, roi_h, roi_w) of a RoI in feature-map pixels (see module doc)."""
    shift = 0.5 if aligned else 0.0
    x_start, y_start = roi[1] * spatial_scale - shift, roi[2] * spatial_scale - shift
    roi_w = (roi[3] * spatial_scale - shift) - x_start
    roi_h = (roi[4] * spatial_scale - shift) - y_start
    if not aligned:  # torchvision's legacy RoIAlign: at least one pixel (NaN stays NaN)
        roi_w = 1.0 if roi_w < 1 else roi_w
        roi_h = 1.0 if roi_h < 1 else roi_h
    return y_start, x_start, roi_h, roi_w


def _grid_size(sampling_ratio, roi_size, pooled):
    """Samples across one bin: the given ratio, or ceil(roi_size / pooled) when <= 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    if not math.isfinite(roi_size):
        return 0
    return max(math.ceil(roi_size / pooled), 0)


def _bilinear_corners(y, x, height, width):
    """torchvision's bilinear rule for arrays of points (y, x).

    Returns (inside, rows (y0, y1), cols (x0, x1), weights (w00, w01, w10, w11)); points
    outside the band (NaN included) get weight 0 and corner (0, 0).
    """
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)  # NaN fails every test
    ys = np.where(inside, np.maximum(y, 0), 0)
    xs = np.where(inside, np.maximum(x, 0), 0)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)  # floor, since ys, xs >= 0
    last_row, last_col = y0 >= height - 1, x0 >= width - 1
    y0, x0 = np.where(last_row, height - 1, y0), np.where(last_col, width - 1, x0)
    y1, x1 = np.where(last_row, y0, y0 + 1), np.where(last_col, x0, x0 + 1)
    ly = np.where(last_row, 0, ys - y0).astype(ys.dtype)
    lx = np.where(last_col, 0, xs - x0).astype(xs.dtype)
    hy, hx = 1 - ly, 1 - lx
    weights = [w * inside for w in (hy * hx, hy * lx, ly * hx, ly * lx)]
    return inside, (y0, y1), (x0, x1), weights


def _bin_samples(roi, offset_k, output_size, spatial_scale, sampling_ratio, gamma, aligned,
                 height, width):
    """Where the samples of one RoI land: the routine shared by roi_align and the
    deformable poolings.

    Returns a dict of arrays of shape (ph, pw, grid_h, grid_w): the sample points y, x,
    the corner rows / cols and weights of ``_bilinear_corners``, plus the scalars
    count = max(grid_h * grid_w, 1), roi_h and roi_w.
    """
    ph, pw = output_size
    y_start, x_start, roi_h, roi_w = _box(roi, spatial_scale, aligned)
    grid_h = _grid_size(sampling_ratio, roi_h, ph)
    grid_w = _grid_size(sampling_ratio, roi_w, pw)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    # bin (i, j) starts here once its offset has moved it; shape (ph, pw)
    bin_y = (y_start + gamma * roi_h * offset_k[1]) + np.arange(ph)[:, None] * bin_h
    bin_x = (x_start + gamma * roi_w * offset_k[0]) + np.arange(pw)[None, :] * bin_w
    sub_y = (np.arange(grid_h) + 0.5) * bin_h / grid_h  # within a bin; shape (grid_h,)
    sub_x = (np.arange(grid_w) + 0.5) * bin_w / grid_w
    y = (bin_y[:, :, None, None] + sub_y[:, None]).astype(offset_k.dtype)
    x = (bin_x[:, :, None, None] + sub_x[None, :]).astype(offset_k.dtype)
    y, x = np.broadcast_arrays(y, x)
    inside, rows, cols, weights = _bilinear_corners(y, x, height, width)
    return dict(y=y, x=x, inside=inside, rows=rows, cols=cols, weights=weights,
                count=max(grid_h * grid_w, 1), roi_h=roi_h, roi_w=roi_w)


def _channel_map(c_out, output_size, position_sensitive):
    """Input channel read by (output channel c, bin i, j); shape (C_out, ph, pw, 1, 1)."""
    ph, pw = output_size
    c, i, j = np.ogrid[:c_out, :ph, :pw]
    channel = (c * ph + i) * pw + j if position_sensitive else np.broadcast_to(c, (c_out, ph, pw))
    return channel[..., None, None]


def _corner_values(plane_stack, channel, s):
    """v(y0, x0), v(y0, x1), v(y1, x0), v(y1, x1) per (c, i, j, sample)."""
    (y0, y1), (x0, x1) = s["rows"], s["cols"]
    return [plane_stack[channel, r, q] for r, q in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))]


def _bin_means(plane_stack, channel, s):
    """Mean over each bin's samples, (C_out, ph, pw); samples outside read 0 (skipped)."""
    values = _corner_values(plane_stack, channel, s)
    sampled = sum(w * v for w, v in zip(s["weights"], values))  # (C_out, ph, pw, gh, gw)
    return np.where(s["inside"], sampled, 0).sum(axis=(-2, -1)) / s["count"]


def _stand_ins(rois, offset, mask, output_size, dtype):
    """The offsets and mask as given; zero offsets and a unit mask (unmodulated) stand in
    for absent ones."""
    shape = (rois.shape[0], 1) + tuple(output_size)
    offset = np.zeros((shape[0], 2) + shape[2:], dtype) if offset is None else offset
    mask = np.ones(shape, dtype) if mask is None else mask
    return np.ascontiguousarray(offset), np.ascontiguousarray(mask)


def sampled_roi_forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, aligned, position_sensitive):
    """The forward of all three sampled poolings (``functional/roi.py`` sets the switches)."""
    x, rois = np.ascontiguousarray(x), np.ascontiguousarray(rois)
    offset, mask = _stand_ins(rois, offset, mask, output_size, x.dtype)
    _, C, H, W = x.shape
    c_out = C // (output_size[0] * output_size[1]) if position_sensitive else C
    channel = _channel_map(c_out, output_size, position_sensitive)
    y = np.zeros((rois.shape[0], c_out) + tuple(output_size), x.dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf rois are allowed: they pool to 0
        for k, roi in enumerate(rois):
            s = _bin_samples(roi, offset[k], output_size, spatial_scale, sampling_ratio, gamma,
                             aligned, H, W)
            y[k] = _bin_means(x[int(roi[0])], channel, s) * mask[k, 0]
    return y


def sampled_roi_backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale,
                         sampling_ratio, gamma, aligned, position_sensitive):
    """Gradients of ``sampled_roi_forward``: (grad_x, grad_offset, grad_mask); the last two
    are None when x is None."""
    grad_y, rois = np.ascontiguousarray(grad_y), np.ascontiguousarray(rois)
    output_size, input_shape, want_offset_mask = grad_y.shape[2:], tuple(input_shape), x is not None
    offset, mask = _stand_ins(rois, offset, mask, output_size, grad_y.dtype)
    _, _, H, W = input_shape
    K, c_out = grad_y.shape[:2]
    channel = _channel_map(c_out, output_size, position_sensitive)
    grad_x = np.zeros(input_shape, grad_y.dtype)
    grad_offset = np.zeros((K, 2) + tuple(output_size), grad_y.dtype) if want_offset_mask else None
    grad_mask = np.zeros((K, 1) + tuple(output_size), grad_y.dtype) if want_offset_mask else None
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf rois are allowed: they pool to 0
        for k, roi in enumerate(rois):
            b = int(roi[0])
            s = _bin_samples(roi, offset[k], output_size, spatial_scale, sampling_ratio, gamma,
                             aligned, H, W)
            # what each sample passes on, (C_out, ph, pw, 1, 1)
            g = (grad_y[k] * mask[k, 0] / s["count"])[..., None, None]
            (y0, y1), (x0, x1) = s["rows"], s["cols"]
            inside = s["inside"]
            keep = np.broadcast_to(inside, (c_out,) + inside.shape)  # (C_out, ph, pw, gh, gw)

            def kept(a):
                return np.broadcast_to(a, keep.shape)[keep]

            for w, r, q in zip(s["weights"], (y0, y0, y1, y1), (x0, x1, x0, x1)):
                np.add.at(grad_x[b], (kept(channel), kept(r), kept(q)), kept(g * w))
            if not want_offset_mask:
                continue
            plane_stack = np.ascontiguousarray(x)[b]
            v00, v01, v10, v11 = _corner_values(plane_stack, channel, s)
            sy, sx = s["y"], s["x"]  # the samples, unclamped
            dv_dx = (y1 - sy) * (v01 - v00) + (sy - y0) * (v11 - v10)
            dv_dy = (x1 - sx) * (v10 - v00) + (sx - x0) * (v11 - v01)
            # per sample, as mmcv: a RoI without samples (NaN box) gets 0, not 0 * NaN
            along_x = np.where(inside, gamma * s["roi_w"] * g * dv_dx, 0)
            along_y = np.where(inside, gamma * s["roi_h"] * g * dv_dy, 0)
            grad_offset[k, 0] = along_x.sum(axis=(0, -2, -1))
            grad_offset[k, 1] = along_y.sum(axis=(0, -2, -1))
            grad_mask[k, 0] = (grad_y[k] * _bin_means(plane_stack, channel, s)).sum(axis=0)
    return grad_x, grad_offset, grad_mask
