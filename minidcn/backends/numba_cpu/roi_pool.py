"""RoI pooling compiled with Numba: the same kernels, arguments and numbers as
``backends/reference/roi_pool.py`` (whose docstring lists them and states every convention).

How the work is split
---------------------
roi_align, deform_roi_pool and deform_ps_roi_pool run through one set of loops
(``_pool_forward``, ``_pool_input_grad``, ``_pool_offset_mask_grad``, behind ``sampled_roi_forward``
and ``sampled_roi_backward``; each op's Function in ``functional/roi.py`` sets the switches) and one
sampling routine, ``_bin_samples``, built from the scalar formulas of
``backends/formulas/roi.py`` (shared with the cuda backend): it lists the samples of one
bin that land inside the image, with their corners and bilinear weights.  Those depend on
(RoI, bin), not on the channel, so each bin's list is built once per block of
``CHANNEL_BLOCK`` channels and reused for every channel of the block (blocks keep the
planes being read in cache: about twice as fast as building the list once for all
channels).

Threads (``prange``) only ever write what they own, so every result is bitwise the same
whatever NUMBA_NUM_THREADS is:

* forwards, and the offset / mask gradient (a gather over channels), split the RoIs;
* the input gradient is a scatter: RoIs overlap, so splitting them would race.  It splits
  the output channels in blocks of ``CHANNEL_BLOCK`` instead; each input channel is fed by
  exactly one output channel (itself, or its position-sensitive group), so a block owns
  its input planes, and adds into them in the fixed order RoI, bin, sample;
* roi_pool's backward splits the channels the same way.

Intermediate arithmetic is float64 (Numba promotes float32 mixed with literals), results
are stored in x's dtype; roi_pool's bin edges are computed in x's own precision, as
torchvision does, because a rounding difference there moves a whole pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import for_cpu
from ..formulas import roi as formulas

__all__ = ["roi_pool_forward", "roi_pool_backward", "sampled_roi_forward",
           "sampled_roi_backward"]

CHANNEL_BLOCK = 16

_pixel_edge = for_cpu(formulas.pixel_edge)
_pixel_size = for_cpu(formulas.pixel_size)
_any_nan = for_cpu(formulas.any_nan)
_pixel_range = for_cpu(formulas.pixel_range)
_window_max = for_cpu(formulas.window_max)
_roi_geometry = for_cpu(formulas.roi_geometry)
_sample_count = for_cpu(formulas.sample_count)
_sample_coord = for_cpu(formulas.sample_coord)
_sample_corners = for_cpu(formulas.sample_corners)
_bilinear_value = for_cpu(formulas.bilinear_value)
_position_slopes = for_cpu(formulas.position_slopes)
_channel = for_cpu(formulas.channel)


# ---------------------------------------------------------------------------- roi_pool
@njit(cache=True, parallel=True)
def _roi_pool_forward(x, rois, spatial_scale, y, argmax):
    K, C, ph, pw = y.shape
    H, W = x.shape[2], x.shape[3]
    T = x.dtype.type  # bin edges in x's precision, as torchvision computes them
    for k in prange(K):
        scale = T(spatial_scale)
        x1, y1 = rois[k, 1] * scale, rois[k, 2] * scale
        x2, y2 = rois[k, 3] * scale, rois[k, 4] * scale
        if _any_nan(x1, y1, x2, y2):
            continue  # every bin empty: 0, argmax -1
        x_start, y_start = _pixel_edge(x1), _pixel_edge(y1)
        roi_w = _pixel_size(x_start, _pixel_edge(x2))
        roi_h = _pixel_size(y_start, _pixel_edge(y2))
        b = int(rois[k, 0])
        bin_h, bin_w = T(roi_h) / T(ph), T(roi_w) / T(pw)
        for i in range(ph):
            h0, h1 = _pixel_range(y_start, T(i) * bin_h, T(i + 1) * bin_h, H)
            for j in range(pw):
                w0, w1 = _pixel_range(x_start, T(j) * bin_w, T(j + 1) * bin_w, W)
                if h1 <= h0 or w1 <= w0:
                    continue
                for c in range(C):
                    y[k, c, i, j], argmax[k, c, i, j] = _window_max(x[b, c], h0, h1, w0, w1)


@njit(cache=True, parallel=True)
def _roi_pool_backward(grad_y, argmax, rois, grad_x):
    K, C, ph, pw = grad_y.shape
    W = grad_x.shape[3]
    for c in prange(C):  # a thread owns the channel-c planes of grad_x
        for k in range(K):
            b = int(rois[k, 0])
            for i in range(ph):
                for j in range(pw):
                    where = argmax[k, c, i, j]
                    if where >= 0:
                        grad_x[b, c, where // W, where % W] += grad_y[k, c, i, j]


def roi_pool_forward(x, rois, output_size, spatial_scale):
    x, rois = np.ascontiguousarray(x), np.ascontiguousarray(rois)
    shape = (rois.shape[0], x.shape[1]) + tuple(output_size)
    y = np.zeros(shape, x.dtype)
    argmax = np.full(shape, -1, np.int64)
    _roi_pool_forward(x, rois, float(spatial_scale), y, argmax)
    return y, argmax


def roi_pool_backward(grad_y, argmax, rois, input_shape):
    grad_y = np.ascontiguousarray(grad_y)
    grad_x = np.zeros(tuple(input_shape), grad_y.dtype)
    _roi_pool_backward(grad_y, np.ascontiguousarray(argmax), np.ascontiguousarray(rois), grad_x)
    return grad_x


# ---------------------------------------------------------------------------- sampling
@njit(cache=True)
def _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned):
    """(batch index, geometry, samples per bin) of RoI k; geometry as formulas.roi_geometry."""
    geometry = _roi_geometry(rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], ph, pw,
                             spatial_scale, sampling_ratio, aligned)
    return int(rois[k, 0]), geometry, _sample_count(geometry[4], geometry[5])


@njit(cache=True)
def _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width, where, weights, spans):
    """The samples of bin (i, j) of RoI k that land inside the image; returns how many.

    For sample s, with corners (y0, x0), (y0, x1), (y1, x0), (y1, x1) in that order, fills
    ``where[s]`` with their flat positions y * W + x in the (H, W) plane, ``weights[s]`` with
    their bilinear weights, and ``spans[s] = (y1 - y, y - y0, x1 - x, x - x0)`` with the
    unclamped sample (y, x), for mmcv's offset gradient.  Shared by roi_align and the
    deformable poolings::

        y = (y_start + gamma roi_h offset[k, 1, i, j]) + i bin_h + (iy + 0.5) bin_h / grid_h
    """
    y_start, x_start, roi_h, roi_w, grid_h, grid_w = geometry
    n = 0
    for iy in range(grid_h):
        y = _sample_coord(y_start, roi_h, offset[k, 1, i, j], gamma, i, ph, iy, grid_h)
        for ix in range(grid_w):
            x = _sample_coord(x_start, roi_w, offset[k, 0, i, j], gamma, j, pw, ix, grid_w)
            inside, y0, y1, x0, x1, w = _sample_corners(y, x, height, width)
            if inside:
                where[n, 0], where[n, 1] = y0 * width + x0, y0 * width + x1
                where[n, 2], where[n, 3] = y1 * width + x0, y1 * width + x1
                weights[n, 0], weights[n, 1], weights[n, 2], weights[n, 3] = w
                spans[n, 0], spans[n, 1], spans[n, 2], spans[n, 3] = y1 - y, y - y0, x1 - x, x - x0
                n += 1
    return n


@njit(cache=True)
def _sample_buffers(max_samples):
    """where, weights, spans for one bin's samples (see _bin_samples)."""
    return (np.empty((max_samples, 4), np.int64), np.empty((max_samples, 4), np.float64),
            np.empty((max_samples, 4), np.float64))


@njit(cache=True)
def _sample_value(plane, where, weights, s):
    """sum_n w_n v_n of sample s, in a flattened (H * W,) plane."""
    return _bilinear_value(weights[s, 0], weights[s, 1], weights[s, 2], weights[s, 3],
                           plane[where[s, 0]], plane[where[s, 1]], plane[where[s, 2]],
                           plane[where[s, 3]])


@njit(cache=True)
def _max_samples(rois, ph, pw, spatial_scale, sampling_ratio, aligned):
    """The largest grid_h * grid_w over the RoIs: the size of the per-bin sample buffers."""
    most = 0
    for k in range(rois.shape[0]):
        _, geometry, _ = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
        most = max(most, geometry[4] * geometry[5])
    return most


@njit(cache=True)
def _channel_blocks(c_out):
    """How many blocks of CHANNEL_BLOCK output channels."""
    return (c_out + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK


@njit(cache=True)
def _block_channels(block, c_out):
    """The output channels [c_lo, c_hi) of a block."""
    return block * CHANNEL_BLOCK, min((block + 1) * CHANNEL_BLOCK, c_out)


@njit(cache=True, parallel=True)
def _pool_forward(x, rois, offset, mask, height, width, spatial_scale, sampling_ratio, gamma,
                  aligned, position_sensitive, max_samples, y):
    """x is (B, C, H * W): each plane flattened."""
    K, c_out, ph, pw = y.shape
    for k in prange(K):  # a thread owns y[k]
        where, weights, spans = _sample_buffers(max_samples)
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
        for block in range(_channel_blocks(c_out)):  # a few planes at a time stay in cache
            c_lo, c_hi = _block_channels(block, c_out)
            for i in range(ph):
                for j in range(pw):
                    n = _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width,
                                     where, weights, spans)
                    for c in range(c_lo, c_hi):
                        plane = x[b, _channel(c, i, j, ph, pw, position_sensitive)]
                        total = 0.0
                        for s in range(n):
                            total += _sample_value(plane, where, weights, s)
                        y[k, c, i, j] = total / count * mask[k, 0, i, j]


@njit(cache=True, parallel=True)
def _pool_input_grad(grad_y, rois, offset, mask, height, width, spatial_scale, sampling_ratio,
                     gamma, aligned, position_sensitive, max_samples, grad_x):
    """grad_x is (B, C, H * W): each plane flattened."""
    K, c_out, ph, pw = grad_y.shape
    for block in prange(_channel_blocks(c_out)):  # a thread owns its channels' input planes
        where, weights, spans = _sample_buffers(max_samples)
        c_lo, c_hi = _block_channels(block, c_out)
        for k in range(K):
            b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
            for i in range(ph):
                for j in range(pw):
                    n = _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width,
                                     where, weights, spans)
                    for c in range(c_lo, c_hi):
                        plane = grad_x[b, _channel(c, i, j, ph, pw, position_sensitive)]
                        g = grad_y[k, c, i, j] * mask[k, 0, i, j] / count
                        for s in range(n):
                            for corner in range(4):
                                plane[where[s, corner]] += g * weights[s, corner]


@njit(cache=True, parallel=True)
def _pool_offset_mask_grad(grad_y, x, rois, offset, mask, height, width, spatial_scale,
                           sampling_ratio, gamma, position_sensitive, max_samples, grad_offset,
                           grad_mask):
    """mmcv's offset gradient and the mask gradient (formulas in the reference docstring);
    x is (B, C, H * W)."""
    K, c_out, ph, pw = grad_y.shape
    for k in prange(K):  # a thread owns grad_offset[k] and grad_mask[k]
        where, weights, spans = _sample_buffers(max_samples)
        sums = np.zeros((3, ph, pw))  # along x, along y, for the mask: summed over channels
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, True)
        scale_x, scale_y = gamma * geometry[3], gamma * geometry[2]  # d(sample)/d(offset)
        for block in range(_channel_blocks(c_out)):
            c_lo, c_hi = _block_channels(block, c_out)
            for i in range(ph):
                for j in range(pw):
                    n = _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width,
                                     where, weights, spans)
                    for c in range(c_lo, c_hi):
                        plane = x[b, _channel(c, i, j, ph, pw, position_sensitive)]
                        g = grad_y[k, c, i, j] * mask[k, 0, i, j] / count
                        pooled = 0.0
                        for s in range(n):
                            v00, v01 = plane[where[s, 0]], plane[where[s, 1]]
                            v10, v11 = plane[where[s, 2]], plane[where[s, 3]]
                            dv_dx, dv_dy = _position_slopes(spans[s, 0], spans[s, 1], spans[s, 2],
                                                            spans[s, 3], v00, v01, v10, v11)
                            sums[0, i, j] += scale_x * g * dv_dx
                            sums[1, i, j] += scale_y * g * dv_dy
                            pooled += _sample_value(plane, where, weights, s)
                        sums[2, i, j] += grad_y[k, c, i, j] * (pooled / count)
        grad_offset[k, 0] = sums[0]
        grad_offset[k, 1] = sums[1]
        grad_mask[k, 0] = sums[2]


# ---------------------------------------------------------------------------- entry points
def _prepare(rois, offset, mask, output_size, dtype):
    """Contiguous rois, and the zero offsets / unit mask that stand in for absent ones."""
    shape = (rois.shape[0], 1) + tuple(output_size)
    offset = np.zeros((shape[0], 2) + shape[2:], dtype) if offset is None else offset
    mask = np.ones(shape, dtype) if mask is None else mask
    return np.ascontiguousarray(rois), np.ascontiguousarray(offset), np.ascontiguousarray(mask)


def sampled_roi_forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, aligned, position_sensitive):
    x = np.ascontiguousarray(x)
    rois, offset, mask = _prepare(rois, offset, mask, output_size, x.dtype)
    ph, pw = output_size
    c_out = x.shape[1] // (ph * pw) if position_sensitive else x.shape[1]
    y = np.zeros((rois.shape[0], c_out, ph, pw), x.dtype)
    most = _max_samples(rois, ph, pw, float(spatial_scale), sampling_ratio, aligned)
    B, C, H, W = x.shape
    _pool_forward(x.reshape(B, C, H * W), rois, offset, mask, H, W, float(spatial_scale),
                  sampling_ratio, float(gamma), aligned, position_sensitive, most, y)
    return y


def sampled_roi_backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale,
                         sampling_ratio, gamma, aligned, position_sensitive):
    """(grad_x, grad_offset, grad_mask); the last two only when x is given."""
    grad_y = np.ascontiguousarray(grad_y)
    output_size = grad_y.shape[2:]
    rois, offset, mask = _prepare(rois, offset, mask, output_size, grad_y.dtype)
    most = _max_samples(rois, output_size[0], output_size[1], float(spatial_scale),
                        sampling_ratio, aligned)
    B, C, H, W = input_shape
    grad_x = np.zeros((B, C, H * W), grad_y.dtype)
    _pool_input_grad(grad_y, rois, offset, mask, H, W, float(spatial_scale), sampling_ratio,
                     float(gamma), aligned, position_sensitive, most, grad_x)
    grad_x = grad_x.reshape(B, C, H, W)
    if x is None:
        return grad_x, None, None
    grad_offset = np.zeros(offset.shape, grad_y.dtype)
    grad_mask = np.zeros(mask.shape, grad_y.dtype)
    _pool_offset_mask_grad(grad_y, np.ascontiguousarray(x).reshape(B, C, H * W), rois, offset,
                           mask, H, W, float(spatial_scale), sampling_ratio, float(gamma),
                           position_sensitive, most, grad_offset, grad_mask)
    return grad_x, grad_offset, grad_mask
