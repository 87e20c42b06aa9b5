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
(RoI, bin), not on the channel, so each bin's list is built once and used for many channels.

What made the forward and the input gradient fast: channels-last rows
----------------------------------------------------------------------
A sample reads the same four pixels of every channel.  In the (B, C, H, W) layout those
are 4 C values H·W apart (a different cache line each, and a scalar loop).  So the forward
first copies x to channels-last rows, ``rows[b, y W + x, g, c]`` (``_channel_rows``, a
tiled transpose, ``_swap_outer_inner``), and the input gradient adds into such rows and
turns them back into planes at the end.  Then one sample is four contiguous rows, and the
loop over channels, ``total[c] += w00 v00[c] + w01 v01[c] + w10 v10[c] + w11 v11[c]``, is
a plain vector loop: about 3x less CPU time than the plane-by-plane loops for the benchmark
(512 RoIs, 256 channels); the two transposes cost about 1 ms each.  Every channel still adds
its samples in the same order with the same float64 operations, so the numbers are the
same bits as the plane-by-plane loops gave.  (Position-sensitive pooling reads input
channel c G + g for bin g = i pw + j, so its rows hold G = ph pw groups of c_out channels.)
The offset / mask gradient sums over channels, one after the other, so it keeps the planes
and works on ``CHANNEL_BLOCK`` of them at a time, which stay in cache.

Threads (``prange``) only ever write what they own, so every result is bitwise the same
whatever NUMBA_NUM_THREADS is:

* forwards, and the offset / mask gradient (a gather over channels), split the RoIs;
* the input gradient is a scatter: RoIs overlap, so splitting them would race.  It splits
  the output channels in blocks (one per thread, ``_row_block``) instead; each input
  channel is fed by exactly one output channel (itself, or its position-sensitive group),
  so a block owns its slice of every row, and adds into it in the fixed order RoI, bin,
  sample, corner, whatever the blocks are;
* roi_pool's backward splits the channels the same way.

Intermediate arithmetic is float64 (Numba promotes float32 mixed with literals), results
are stored in x's dtype; roi_pool's bin edges are computed in x's own precision, as
torchvision does, because a rounding difference there moves a whole pixel.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from ..formulas import for_cpu
from ..formulas import roi as formulas

__all__ = ["roi_pool_forward", "roi_pool_backward", "sampled_roi_forward",
           "sampled_roi_backward"]

CHANNEL_BLOCK = 16  # planes per block in the offset / mask gradient (they stay in cache)
TILE = 16  # a tile of _swap_outer_inner is TILE x TILE values

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
def _channel_blocks(c_out, size):
    """How many blocks of ``size`` output channels."""
    return (c_out + size - 1) // size


@njit(cache=True)
def _block_channels(block, c_out, size):
    """The output channels [c_lo, c_hi) of a block of ``size``."""
    return block * size, min((block + 1) * size, c_out)


@njit(cache=True, parallel=True)
def _swap_outer_inner(src, dst):
    """dst[b, q, g, p] = src[b, p, g, q]: (B, P, G, Q) -> (B, Q, G, P), in TILE x TILE tiles.

    With src = x viewed as (B, c_out, G, H * W) this makes the channels-last rows the
    sampling loops read; with src = those rows it turns them back into planes.  A tile's
    TILE src rows and TILE dst rows stay in cache while it is copied; indexing the tiles
    from 0 lets numba drop its negative-index checks.
    """
    B, P, G, Q = src.shape
    q_tiles = (Q + TILE - 1) // TILE
    for job in prange(B * q_tiles):  # a thread owns the dst rows q of its tile
        b, q_lo = job // q_tiles, (job % q_tiles) * TILE
        q_hi = min(q_lo + TILE, Q)
        for p_lo in range(0, P, TILE):
            p_hi = min(p_lo + TILE, P)
            for g in range(G):
                tile_in, tile_out = src[b, p_lo:p_hi, g, q_lo:q_hi], dst[b, q_lo:q_hi, g, p_lo:p_hi]
                for q in range(q_hi - q_lo):
                    for p in range(p_hi - p_lo):
                        tile_out[q, p] = tile_in[p, q]


@njit(cache=True, parallel=True)
def _pool_forward(rows, rois, offset, mask, height, width, spatial_scale, sampling_ratio, gamma,
                  aligned, position_sensitive, max_samples, y):
    """rows is x channels-last, (B, H * W, G, c_out) (see _channel_rows)."""
    K, c_out, ph, pw = y.shape
    for k in prange(K):  # a thread owns y[k]
        where, weights, spans = _sample_buffers(max_samples)
        total = np.empty(c_out)  # the bin's sums, one per output channel
        b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
        for i in range(ph):
            for j in range(pw):
                n = _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width,
                                 where, weights, spans)
                group = _channel(0, i, j, ph, pw, position_sensitive)
                total[:] = 0.0
                for s in range(n):  # one sample: four rows, every channel at once
                    w00, w01, w10, w11 = weights[s, 0], weights[s, 1], weights[s, 2], weights[s, 3]
                    v00, v01 = rows[b, where[s, 0], group], rows[b, where[s, 1], group]
                    v10, v11 = rows[b, where[s, 2], group], rows[b, where[s, 3], group]
                    for c in range(c_out):
                        total[c] += _bilinear_value(w00, w01, w10, w11, v00[c], v01[c], v10[c],
                                                    v11[c])
                scale = mask[k, 0, i, j]
                for c in range(c_out):
                    y[k, c, i, j] = total[c] / count * scale


@njit(cache=True, parallel=True)
def _pool_input_grad(grad_y, rois, offset, mask, height, width, spatial_scale, sampling_ratio,
                     gamma, aligned, position_sensitive, max_samples, row_block, grad_rows):
    """grad_rows is grad_x channels-last, (B, H * W, G, c_out), zeros on entry; each block
    of ``row_block`` channels builds every bin's samples again (see _row_block)."""
    K, c_out, ph, pw = grad_y.shape
    for block in prange(_channel_blocks(c_out, row_block)):  # a thread owns its channels
        where, weights, spans = _sample_buffers(max_samples)
        c_lo, c_hi = _block_channels(block, c_out, row_block)
        g = np.empty(c_hi - c_lo)  # the bin's upstream gradient, per channel of the block
        for k in range(K):
            b, geometry, count = _roi_setup(rois, k, ph, pw, spatial_scale, sampling_ratio, aligned)
            for i in range(ph):
                for j in range(pw):
                    n = _bin_samples(geometry, offset, gamma, k, i, j, ph, pw, height, width,
                                     where, weights, spans)
                    group = _channel(0, i, j, ph, pw, position_sensitive)
                    for c in range(c_hi - c_lo):
                        g[c] = grad_y[k, c_lo + c, i, j] * mask[k, 0, i, j] / count
                    for s in range(n):
                        for corner in range(4):
                            row = grad_rows[b, where[s, corner], group, c_lo:c_hi]
                            weight = weights[s, corner]
                            for c in range(c_hi - c_lo):
                                row[c] += g[c] * weight


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
        for block in range(_channel_blocks(c_out, CHANNEL_BLOCK)):
            c_lo, c_hi = _block_channels(block, c_out, CHANNEL_BLOCK)
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


def _groups(output_size, position_sensitive):
    """G, the input channels per output channel: one per bin when position-sensitive."""
    return output_size[0] * output_size[1] if position_sensitive else 1


def _row_block(c_out):
    """Channels per block of the input gradient: c_out split evenly over numba's threads,
    rounded up to 16 (a cache line of float32).  Every block builds all the bins' samples
    again, so the fewer blocks the better (4 blocks of 64 channels took 15% more CPU time
    than 2 of 128 in bench roi); the numbers do not depend on it (each value still adds
    its terms in the order RoI, bin, sample, corner)."""
    per_thread = -(-c_out // get_num_threads())
    return max(16, -(-per_thread // 16) * 16)


def _channel_rows(planes, groups):
    """(B, C, H, W) planes as channels-last rows (B, H * W, G, C / G): the values a sample
    reads for every output channel at once, in one contiguous row (input channel c G + g,
    as formulas.channel numbers them, is rows[b, y W + x, g, c])."""
    B, C, H, W = planes.shape
    rows = np.empty((B, H * W, groups, C // groups), planes.dtype)
    _swap_outer_inner(np.ascontiguousarray(planes).reshape(B, C // groups, groups, H * W), rows)
    return rows


def sampled_roi_forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                        gamma, aligned, position_sensitive):
    rois, offset, mask = _prepare(rois, offset, mask, output_size, x.dtype)
    ph, pw = output_size
    groups = _groups(output_size, position_sensitive)
    y = np.empty((rois.shape[0], x.shape[1] // groups, ph, pw), x.dtype)  # every bin is written
    most = _max_samples(rois, ph, pw, float(spatial_scale), sampling_ratio, aligned)
    _pool_forward(_channel_rows(x, groups), rois, offset, mask, x.shape[2], x.shape[3],
                  float(spatial_scale), sampling_ratio, float(gamma), aligned,
                  position_sensitive, most, y)
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
    groups = _groups(output_size, position_sensitive)
    grad_rows = np.zeros((B, H * W, groups, C // groups), grad_y.dtype)
    _pool_input_grad(grad_y, rois, offset, mask, H, W, float(spatial_scale), sampling_ratio,
                     float(gamma), aligned, position_sensitive, most,
                     _row_block(grad_y.shape[1]), grad_rows)
    grad_x = np.empty(tuple(input_shape), grad_y.dtype)  # owns its memory (autograd adopts it)
    _swap_outer_inner(grad_rows, grad_x.reshape(B, C // groups, groups, H * W))
    if x is None:
        return grad_x, None, None
    grad_offset = np.zeros(offset.shape, grad_y.dtype)
    grad_mask = np.zeros(mask.shape, grad_y.dtype)
    _pool_offset_mask_grad(grad_y, np.ascontiguousarray(x).reshape(B, C, H * W), rois, offset,
                           mask, H, W, float(spatial_scale), sampling_ratio, float(gamma),
                           position_sensitive, most, grad_offset, grad_mask)
    return grad_x, grad_offset, grad_mask
