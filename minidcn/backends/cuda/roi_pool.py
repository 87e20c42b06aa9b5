"""RoI pooling as numba.cuda kernels: the same kernels, arguments and numbers as
``backends/reference/roi_pool.py`` (whose docstring lists them and states every convention).

Arrays are CudaArrays (argmax too, int64).  Every kernel is a grid-stride loop:

* forwards: one thread per output element (k, c, i, j); it walks the samples of its bin;
* input gradients: one thread per output element, scattering with ``cuda.atomic.add``
  (RoIs overlap, so several threads add into the same input pixel);
* offset / mask gradient: one thread per bin (k, i, j), summing over channels and samples
  into values only it writes, so no atomics.

roi_align, deform_roi_pool and deform_ps_roi_pool share these kernels and one sampling
routine (``_bin_sample``), behind ``sampled_roi_forward`` and ``sampled_roi_backward``
(each op's Function in ``functional/roi.py`` sets the switches).  The scalar formulas (box
rounding, bin geometry, sample points, bilinear corners and weights, mmcv's slopes) are
those of ``backends/formulas/roi.py``, compiled here as device functions: the numba
backend compiles the same source for the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import for_gpu
from ..formulas import roi as formulas

__all__ = ["roi_pool_forward", "roi_pool_backward", "sampled_roi_forward",
           "sampled_roi_backward"]


_pixel_edge = for_gpu(formulas.pixel_edge)
_pixel_size = for_gpu(formulas.pixel_size)
_any_nan = for_gpu(formulas.any_nan)
_pixel_range = for_gpu(formulas.pixel_range)
_window_max = for_gpu(formulas.window_max)
_roi_geometry = for_gpu(formulas.roi_geometry)
_sample_count = for_gpu(formulas.sample_count)
_sample_coord = for_gpu(formulas.sample_coord)
_sample_corners = for_gpu(formulas.sample_corners)
_bilinear_value = for_gpu(formulas.bilinear_value)
_position_slopes = for_gpu(formulas.position_slopes)
_channel = for_gpu(formulas.channel)


@cuda.jit(device=True)
def _unravel(index, c_out, ph, pw):
    """(k, c, i, j) of a flat index into a (K, C_out, ph, pw) array."""
    return index // (pw * ph * c_out), (index // (pw * ph)) % c_out, (index // pw) % ph, index % pw


# ---------------------------------------------------------------------------- roi_pool
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
        if not _any_nan(x1, y1, x2, y2):
            x_start, y_start = _pixel_edge(x1), _pixel_edge(y1)
            roi_w = _pixel_size(x_start, _pixel_edge(x2))
            roi_h = _pixel_size(y_start, _pixel_edge(y2))
            bin_h, bin_w = T(roi_h) / T(ph), T(roi_w) / T(pw)
            h0, h1 = _pixel_range(y_start, T(i) * bin_h, T(i + 1) * bin_h, H)
            w0, w1 = _pixel_range(x_start, T(j) * bin_w, T(j + 1) * bin_w, W)
            if h1 > h0 and w1 > w0:
                best, where = _window_max(x[int(rois[k, 0]), c], h0, h1, w0, w1)
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
def _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned):
    """(batch index, geometry, samples per bin) of RoI k; geometry as formulas.roi_geometry."""
    geometry = _roi_geometry(rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], ph, pw,
                             spatial_scale, sampling_ratio, aligned)
    return int(rois[k, 0]), geometry, _sample_count(geometry[4], geometry[5])


@cuda.jit(device=True)
def _bin_sample(geometry, offset, gamma, k, i, j, ph, pw, s, height, width):
    """Sample s (row-major in the grid) of bin (i, j) of RoI k, moved by the bin's offset:
    (y, x, inside, y0, y1, x0, x1, w00, w01, w10, w11), the corners by ``_sample_corners``::

        y = (y_start + gamma roi_h offset[k, 1, i, j]) + i bin_h + (iy + 0.5) bin_h / grid_h
    """
    y_start, x_start, roi_h, roi_w, grid_h, grid_w = geometry
    y = _sample_coord(y_start, roi_h, offset[k, 1, i, j], gamma, i, ph, s // grid_w, grid_h)
    x = _sample_coord(x_start, roi_w, offset[k, 0, i, j], gamma, j, pw, s % grid_w, grid_w)
    inside, y0, y1, x0, x1, w = _sample_corners(y, x, height, width)
    return y, x, inside, y0, y1, x0, x1, w[0], w[1], w[2], w[3]


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
                total += _bilinear_value(w00, w01, w10, w11, x[b, ch, y0, x0], x[b, ch, y0, x1],
                                         x[b, ch, y1, x0], x[b, ch, y1, x1])
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
                    dv_dx, dv_dy = _position_slopes(y1 - py, py - y0, x1 - px, px - x0,
                                                    v00, v01, v10, v11)
                    along_x += scale_x * g * dv_dx
                    along_y += scale_y * g * dv_dy
                    pooled += _bilinear_value(w00, w01, w10, w11, v00, v01, v10, v11)
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


def sampled_roi_forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, aligned, position_sensitive):
    offset, mask = _stand_ins(rois, offset, mask, output_size, x.dtype)
    ph, pw = output_size
    c_out = x.shape[1] // (ph * pw) if position_sensitive else x.shape[1]
    y = CudaArray.empty((rois.shape[0], c_out, ph, pw), x.dtype)
    if y.size:
        _pool_forward_kernel[grid_for(y.size)](
            x.dev, rois.dev, offset.dev, mask.dev, float(spatial_scale), int(sampling_ratio),
            float(gamma), bool(aligned), bool(position_sensitive), y.dev)
    return y


def sampled_roi_backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale,
                         sampling_ratio, gamma, aligned, position_sensitive):
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
