"""RoI pooling as numba.cuda kernels: the same kernels, arguments and numbers as
``backends/reference/roi_pool.py`` (whose docstring lists them and states every convention).

Arrays are CudaArrays (argmax too, int64).  Every kernel is a grid-stride loop:

* forwards: one thread per output element (k, c, i, j); it walks the samples of its bin;
* input gradients: one thread per output element, scattering with ``cuda.atomic.add``
  (RoIs overlap, so several threads add into the same input pixel);
* offset / mask gradient: one thread per bin (k, i, j), summing over channels and samples
  into values only it writes, so no atomics.

roi_align, deform_roi_pool and deform_ps_roi_pool share these kernels and one sampling
routine (``_bin_sample``, which calls ``_bilinear_corners``), behind ``_forward`` and
``_backward`` (``backends/roi_entry_points.py`` sets each op's switches).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..roi_entry_points import entry_points

__all__ = [
    "roi_pool_forward", "roi_pool_backward",
    "roi_align_forward", "roi_align_backward",
    "deform_roi_pool_forward", "deform_roi_pool_backward",
    "deform_ps_roi_pool_forward", "deform_ps_roi_pool_backward",
]

FLT_MAX = float(np.finfo(np.float32).max)
INT_LIMIT = 2.0**31


@cuda.jit(device=True)
def _at_least(v, lo):
    """max(v, lo), spelled out: compiling the builtin max for the device failed when we
    checked with numba 0.68's compile_ptx (its varargs overload reaches the device
    compiler unfolded)."""
    return v if v > lo else lo


@cuda.jit(device=True)
def _clip(v, lo, hi):
    """v clipped to [lo, hi]."""
    return lo if v < lo else (hi if v > hi else v)


@cuda.jit(device=True)
def _unravel(index, c_out, ph, pw):
    """(k, c, i, j) of a flat index into a (K, C_out, ph, pw) array."""
    return index // (pw * ph * c_out), (index // (pw * ph)) % c_out, (index // pw) % ph, index % pw


# ---------------------------------------------------------------------------- roi_pool
@cuda.jit(device=True)
def _round_half_away(v):
    """C's round(): halves go away from zero."""
    a = abs(v)
    whole = math.floor(a)
    return math.copysign(whole + (1.0 if a - whole >= 0.5 else 0.0), v)


@cuda.jit(device=True)
def _pixel_edge(v):
    """A scaled coordinate rounded to a whole pixel, clipped to +-2**31."""
    return int(_round_half_away(_clip(v, -INT_LIMIT, INT_LIMIT)))


@cuda.jit(device=True)
def _pixel_range(start, lo_edge, hi_edge, limit):
    """Rows (or columns) [lo, hi) of a bin with edges lo_edge, hi_edge, clipped to [0, limit]."""
    lo = start + int(math.floor(lo_edge))
    hi = start + int(math.ceil(hi_edge))
    return _clip(lo, 0, limit), _clip(hi, 0, limit)


@cuda.jit
def _roi_pool_forward_kernel(x, rois, spatial_scale, y, argmax):
    K, C, ph, pw = y.shape
    H, W = x.shape[2], x.shape[3]
    T = x.dtype.type  # bin edges in x's precision, as torchvision computes them
    scale = T(spatial_scale)
    for index in range(cuda.grid(1), K * C * ph * pw, cuda.gridsize(1)):
        k, c, i, j = _unravel(index, C, ph, pw)
        x1, y1 = rois[k, 1] * scale, rois[k, 2] * scale
        x2, y2 = rois[k, 3] * scale, rois[k, 4] * scale
        best, where = 0.0, -1  # a NaN box or an empty bin: 0, argmax -1
        if not (math.isnan(x1) or math.isnan(y1) or math.isnan(x2) or math.isnan(y2)):
            x_start, y_start = _pixel_edge(x1), _pixel_edge(y1)
            roi_w = _at_least(_pixel_edge(x2) - x_start + 1, 1)
            roi_h = _at_least(_pixel_edge(y2) - y_start + 1, 1)
            bin_h, bin_w = T(roi_h) / T(ph), T(roi_w) / T(pw)
            h0, h1 = _pixel_range(y_start, T(i) * bin_h, T(i + 1) * bin_h, H)
            w0, w1 = _pixel_range(x_start, T(j) * bin_w, T(j + 1) * bin_w, W)
            if h1 > h0 and w1 > w0:
                b = int(rois[k, 0])
                best = -FLT_MAX
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        if x[b, c, h, w] > best:  # strict: the first maximum wins
                            best, where = x[b, c, h, w], h * W + w
        y[k, c, i, j] = best
        argmax[k, c, i, j] = where


@cuda.jit
def _roi_pool_backward_kernel(grad_y, argmax, rois, grad_x):
    K, C, ph, pw = grad_y.shape
    W = grad_x.shape[3]
    for index in range(cuda.grid(1), K * C * ph * pw, cuda.gridsize(1)):
        k, c, i, j = _unravel(index, C, ph, pw)
        where = argmax[k, c, i, j]
        if where >= 0:
            cuda.atomic.add(grad_x, (int(rois[k, 0]), c, where // W, where % W), grad_y[k, c, i, j])


def roi_pool_forward(x, rois, output_size, spatial_scale):
    shape = (rois.shape[0], x.shape[1]) + tuple(output_size)
    y = CudaArray.empty(shape, x.dtype)
    argmax = CudaArray.empty(shape, np.int64)
    if y.size:
        _roi_pool_forward_kernel[grid_for(y.size)](x.dev, rois.dev, float(spatial_scale),
                                                   y.dev, argmax.dev)
    return y, argmax


def roi_pool_backward(grad_y, argmax, rois, input_shape):
    grad_x = CudaArray.zeros(tuple(input_shape), grad_y.dtype)
    if grad_y.size:
        _roi_pool_backward_kernel[grid_for(grad_y.size)](grad_y.dev, argmax.dev, rois.dev,
                                                         grad_x.dev)
    return grad_x


# ---------------------------------------------------------------------------- sampling
@cuda.jit(device=True)
def _grid_size(sampling_ratio, roi_size, pooled):
    """Samples across one bin: the given ratio, or ceil(roi_size / pooled) when <= 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    if not math.isfinite(roi_size):
        return 0
    return _at_least(int(math.ceil(roi_size / pooled)), 0)


@cuda.jit(device=True)
def _roi_geometry(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned):
    """(y_start, x_start, roi_h, roi_w, grid_h, grid_w) of RoI k in feature-map pixels."""
    shift = 0.5 if aligned else 0.0
    x_start = rois[k, 1] * spatial_scale - shift
    y_start = rois[k, 2] * spatial_scale - shift
    roi_w = (rois[k, 3] * spatial_scale - shift) - x_start
    roi_h = (rois[k, 4] * spatial_scale - shift) - y_start
    if not aligned:  # torchvision's legacy RoIAlign: at least one pixel (NaN stays NaN)
        roi_w = 1.0 if roi_w < 1.0 else roi_w
        roi_h = 1.0 if roi_h < 1.0 else roi_h
    grid_h = _grid_size(sampling_ratio, roi_h, ph)
    grid_w = _grid_size(sampling_ratio, roi_w, pw)
    return y_start, x_start, roi_h, roi_w, grid_h, grid_w


@cuda.jit(device=True)
def _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned):
    """(batch index, geometry, samples per bin at least 1) of RoI k."""
    geometry = _roi_geometry(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
    return int(rois[k, 0]), geometry, _at_least(geometry[4] * geometry[5], 1)


@cuda.jit(device=True)
def _axis_corners(v, size):
    """Along one axis: the two neighbours of v (both size - 1 past the last pixel centre,
    v <= 0 read as 0) and the fraction of the way to the second."""
    v = _at_least(v, 0.0)
    low = int(v)
    if low >= size - 1:
        return size - 1, size - 1, 0.0
    return low, low + 1, v - low


@cuda.jit(device=True)
def _bilinear_corners(y, x, height, width):
    """torchvision's bilinear rule for one point: (inside, y0, y1, x0, x1, w00, w01, w10, w11)."""
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):  # NaN fails too
        return False, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0
    y0, y1, ly = _axis_corners(y, height)
    x0, x1, lx = _axis_corners(x, width)
    hy, hx = 1.0 - ly, 1.0 - lx
    return True, y0, y1, x0, x1, hy * hx, hy * lx, ly * hx, ly * lx


@cuda.jit(device=True)
def _bin_sample(geometry, offset, gamma, k, i, j, ph, pw, s, height, width):
    """Sample s (row-major in the grid) of bin (i, j) of RoI k, moved by the bin's offset:
    (y, x, inside, y0, y1, x0, x1, w00, w01, w10, w11), the corners by ``_bilinear_corners``::

        y = (y_start + gamma roi_h offset[k, 1, i, j]) + i bin_h + (iy + 0.5) bin_h / grid_h
    """
    y_start, x_start, roi_h, roi_w, grid_h, grid_w = geometry
    iy, ix = s // grid_w, s % grid_w
    bin_h, bin_w = roi_h / ph, roi_w / pw
    y_bin = (y_start + gamma * roi_h * offset[k, 1, i, j]) + i * bin_h
    x_bin = (x_start + gamma * roi_w * offset[k, 0, i, j]) + j * bin_w
    y = y_bin + (iy + 0.5) * bin_h / grid_h
    x = x_bin + (ix + 0.5) * bin_w / grid_w
    inside, y0, y1, x0, x1, w00, w01, w10, w11 = _bilinear_corners(y, x, height, width)
    return y, x, inside, y0, y1, x0, x1, w00, w01, w10, w11


@cuda.jit(device=True)
def _channel(c, i, j, ph, pw, position_sensitive):
    """Input channel read by bin (i, j) of output channel c."""
    return (c * ph + i) * pw + j if position_sensitive else c


@cuda.jit
def _pool_forward_kernel(x, rois, offset, mask, spatial_scale, sampling_ratio, gamma, aligned,
                         position_sensitive, y):
    K, c_out, ph, pw = y.shape
    H, W = x.shape[2], x.shape[3]
    for index in range(cuda.grid(1), K * c_out * ph * pw, cuda.gridsize(1)):
        k, c, i, j = _unravel(index, c_out, ph, pw)
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
        ch = _channel(c, i, j, ph, pw, position_sensitive)
        total = 0.0
        for s in range(geometry[4] * geometry[5]):
            _, _, inside, y0, y1, x0, x1, w00, w01, w10, w11 = _bin_sample(
                geometry, offset, gamma, k, i, j, ph, pw, s, H, W)
            if inside:
                total += (w00 * x[b, ch, y0, x0] + w01 * x[b, ch, y0, x1]
                          + w10 * x[b, ch, y1, x0] + w11 * x[b, ch, y1, x1])
        y[k, c, i, j] = total / count * mask[k, 0, i, j]


@cuda.jit
def _pool_input_grad_kernel(grad_y, rois, offset, mask, spatial_scale, sampling_ratio, gamma,
                            aligned, position_sensitive, grad_x):
    K, c_out, ph, pw = grad_y.shape
    H, W = grad_x.shape[2], grad_x.shape[3]
    T = grad_x.dtype.type  # atomic.add wants the array's own type
    for index in range(cuda.grid(1), K * c_out * ph * pw, cuda.gridsize(1)):
        k, c, i, j = _unravel(index, c_out, ph, pw)
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
        ch = _channel(c, i, j, ph, pw, position_sensitive)
        g = grad_y[k, c, i, j] * mask[k, 0, i, j] / count
        for s in range(geometry[4] * geometry[5]):
            _, _, inside, y0, y1, x0, x1, w00, w01, w10, w11 = _bin_sample(
                geometry, offset, gamma, k, i, j, ph, pw, s, H, W)
            if inside:
                cuda.atomic.add(grad_x, (b, ch, y0, x0), T(g * w00))
                cuda.atomic.add(grad_x, (b, ch, y0, x1), T(g * w01))
                cuda.atomic.add(grad_x, (b, ch, y1, x0), T(g * w10))
                cuda.atomic.add(grad_x, (b, ch, y1, x1), T(g * w11))


@cuda.jit
def _pool_offset_mask_grad_kernel(grad_y, x, rois, offset, mask, spatial_scale, sampling_ratio,
                                  gamma, position_sensitive, grad_offset, grad_mask):
    """mmcv's offset gradient and the mask gradient (formulas in the reference docstring)."""
    K, c_out, ph, pw = grad_y.shape
    H, W = x.shape[2], x.shape[3]
    for index in range(cuda.grid(1), K * ph * pw, cuda.gridsize(1)):
        k, _, i, j = _unravel(index, 1, ph, pw)
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, True)
        scale_x, scale_y = gamma * geometry[3], gamma * geometry[2]  # d(sample)/d(offset)
        along_x, along_y, for_mask = 0.0, 0.0, 0.0
        for c in range(c_out):
            ch = _channel(c, i, j, ph, pw, position_sensitive)
            g = grad_y[k, c, i, j] * mask[k, 0, i, j] / count
            pooled = 0.0
            for s in range(geometry[4] * geometry[5]):
                py, px, inside, y0, y1, x0, x1, w00, w01, w10, w11 = _bin_sample(
                    geometry, offset, gamma, k, i, j, ph, pw, s, H, W)
                if inside:
                    v00, v01 = x[b, ch, y0, x0], x[b, ch, y0, x1]
                    v10, v11 = x[b, ch, y1, x0], x[b, ch, y1, x1]
                    along_x += scale_x * g * ((y1 - py) * (v01 - v00) + (py - y0) * (v11 - v10))
                    along_y += scale_y * g * ((x1 - px) * (v10 - v00) + (px - x0) * (v11 - v01))
                    pooled += w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11
            for_mask += grad_y[k, c, i, j] * (pooled / count)
        grad_offset[k, 0, i, j] = along_x
        grad_offset[k, 1, i, j] = along_y
        grad_mask[k, 0, i, j] = for_mask


# ---------------------------------------------------------------------------- entry points
def _stand_ins(rois, offset, mask, output_size, dtype):
    """The zero offsets / unit mask that stand in for absent ones, on the device."""
    shape = (rois.shape[0], 1) + tuple(output_size)
    if offset is None:
        offset = CudaArray.zeros((shape[0], 2) + shape[2:], dtype)
    if mask is None:
        mask = CudaArray.from_host(np.ones(shape, dtype))
    return offset, mask


def _forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma,
             aligned, position_sensitive):
    offset, mask = _stand_ins(rois, offset, mask, output_size, x.dtype)
    ph, pw = output_size
    c_out = x.shape[1] // (ph * pw) if position_sensitive else x.shape[1]
    y = CudaArray.empty((rois.shape[0], c_out, ph, pw), x.dtype)
    if y.size:
        _pool_forward_kernel[grid_for(y.size)](
            x.dev, rois.dev, offset.dev, mask.dev, float(spatial_scale), int(sampling_ratio),
            float(gamma), bool(aligned), bool(position_sensitive), y.dev)
    return y


def _backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale, sampling_ratio,
              gamma, aligned, position_sensitive):
    """(grad_x, grad_offset, grad_mask); the last two only when x is given."""
    offset, mask = _stand_ins(rois, offset, mask, grad_y.shape[2:], grad_y.dtype)
    scalars = (float(spatial_scale), int(sampling_ratio), float(gamma))
    grad_x = CudaArray.zeros(tuple(input_shape), grad_y.dtype)
    if grad_y.size:
        _pool_input_grad_kernel[grid_for(grad_y.size)](
            grad_y.dev, rois.dev, offset.dev, mask.dev, *scalars, bool(aligned),
            bool(position_sensitive), grad_x.dev)
    if x is None:
        return grad_x, None, None
    grad_offset = CudaArray.zeros(offset.shape, grad_y.dtype)
    grad_mask = CudaArray.zeros(mask.shape, grad_y.dtype)
    if mask.size:
        _pool_offset_mask_grad_kernel[grid_for(mask.size)](
            grad_y.dev, x.dev, rois.dev, offset.dev, mask.dev, *scalars,
            bool(position_sensitive), grad_offset.dev, grad_mask.dev)
    return grad_x, grad_offset, grad_mask



(roi_align_forward, roi_align_backward, deform_roi_pool_forward, deform_roi_pool_backward,
 deform_ps_roi_pool_forward, deform_ps_roi_pool_backward) = entry_points(_forward, _backward)
