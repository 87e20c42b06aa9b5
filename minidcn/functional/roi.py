"""RoI pooling: roi_pool and roi_align (torchvision.ops), deform_roi_pool (the DCN paper's
deformable RoI pooling with mmcv's conventions, optionally modulated as in DCNv2) and
deform_ps_roi_pool (its position-sensitive R-FCN variant).

Every op takes ``rois`` of shape (K, 5), rows ``[batch_index, x1, y1, x2, y2]`` in image
coordinates (multiplied by ``spatial_scale`` to reach the feature map), as a Tensor or an
array; rois are not differentiable.  Each op checks and keeps its own copy of the rois, so
a caller may reuse its buffer as soon as forward returns: backward reads the copy.  The exact numbers (rounding, sampling grid, border
rules, NaN handling, mmcv's offset gradient) are written out in the reference kernels'
docstring, ``backends/reference/roi_pool.py``.  This module checks every argument before
any kernel runs (Numba checks no bounds) and records the ops in the graph.

roi_align, deform_roi_pool and deform_ps_roi_pool are one computation with switches, so
every backend has one pair of kernels for them, ``sampled_roi_forward`` and
``sampled_roi_backward``; each op's Function below states its switches in the call:
roi_align has no offset, no mask, gamma = 0 and its own ``aligned``; the deformable
poolings are always aligned (mmcv's convention) and differ in ``position_sensitive``.

Differences from torchvision, all in what is accepted:

* a batch index outside [0, B) or not an integer raises ValueError (torchvision reads
  out of bounds);
* rois must be a (K, 5) array (torchvision also takes a list of per-image boxes);
* a bin may take at most ``MAX_SAMPLES_PER_BIN`` samples: a larger ``sampling_ratio**2``
  raises ValueError, and so does, with ``sampling_ratio <= 0``, a RoI so large that its
  adaptive grid would exceed it, in total or along one axis (torchvision runs, for minutes
  to years, or runs out of memory); this catches rois in image coordinates with the
  spatial_scale forgotten.
"""

from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import (as_tensor, check_elements, check_float, check_int, check_ndim, shown_int,
                        check_same_device, check_same_dtype, pair)

__all__ = ["roi_pool", "roi_align", "deform_roi_pool", "deform_ps_roi_pool"]

MAX_SAMPLES_PER_BIN = 2**20


class RoIPool(Function):
    """y[k, c, i, j] = max of x[b_k, c] over bin (i, j); the gradient goes to the argmax."""

    @staticmethod
    def forward(ctx, x, rois, ops, output_size, spatial_scale):
        y, ctx.argmax = ops.roi_pool_forward(x, rois, output_size, spatial_scale)
        ctx.ops, ctx.rois, ctx.input_shape = ops, rois.copy(), x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return ctx.ops.roi_pool_backward(grad_y, ctx.argmax, ctx.rois, ctx.input_shape)


class RoIAlign(Function):
    """y[k, c, i, j] = mean over the bin's sampling grid of bilinear x[b_k, c](y, x)."""

    @staticmethod
    def forward(ctx, x, rois, ops, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.ops, ctx.rois, ctx.input_shape = ops, rois.copy(), x.shape
        ctx.params = (output_size, spatial_scale, sampling_ratio, aligned)
        return ops.sampled_roi_forward(x, rois, None, None, output_size, spatial_scale,
                                       sampling_ratio, 0.0, aligned, False)

    @staticmethod
    def backward(ctx, grad_y):
        _, spatial_scale, sampling_ratio, aligned = ctx.params
        grad_x, _, _ = ctx.ops.sampled_roi_backward(grad_y, None, ctx.rois, None, None,
                                                    ctx.input_shape, spatial_scale,
                                                    sampling_ratio, 0.0, aligned, False)
        return grad_x


class DeformRoIPool(Function):
    """roi_align(aligned=True) with each bin moved by gamma * offset * (roi_w, roi_h), times
    the bin's mask; gradients for x, offset and mask."""

    @staticmethod
    def forward(ctx, x, offset, mask, rois, ops, output_size, spatial_scale, sampling_ratio,
                gamma):
        ctx.ops, ctx.rois = ops, rois.copy()
        ctx.params = (output_size, spatial_scale, sampling_ratio, gamma)
        ctx.save_for_backward(x, offset, mask)
        return ops.sampled_roi_forward(x, rois, offset, mask, *ctx.params, True, False)

    @staticmethod
    def backward(ctx, grad_y):
        x, offset, mask = ctx.saved
        _, *scalars = ctx.params
        grad_x, grad_offset, grad_mask = ctx.ops.sampled_roi_backward(
            grad_y, x, ctx.rois, offset, mask, x.shape, *scalars, True, False)
        return grad_x, grad_offset, grad_mask if mask is not None else None


class DeformPSRoIPool(Function):
    """deform_roi_pool where bin (i, j) of output channel c reads input channel
    (c * ph + i) * pw + j; gradients for x and offset."""

    @staticmethod
    def forward(ctx, x, offset, rois, ops, output_size, spatial_scale, sampling_ratio, gamma):
        ctx.ops, ctx.rois = ops, rois.copy()
        ctx.params = (output_size, spatial_scale, sampling_ratio, gamma)
        ctx.save_for_backward(x, offset)
        return ops.sampled_roi_forward(x, rois, offset, None, *ctx.params, True, True)

    @staticmethod
    def backward(ctx, grad_y):
        x, offset = ctx.saved
        _, *scalars = ctx.params
        grad_x, grad_offset, _ = ctx.ops.sampled_roi_backward(
            grad_y, x, ctx.rois, offset, None, x.shape, *scalars, True, True)
        return grad_x, grad_offset


# ---------------------------------------------------------------------------- validation
def _input(fn, input) -> Tensor:
    x = as_tensor(fn, "input", input)
    check_ndim(fn, "input", x, "(B, C, H, W)")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{fn}: input must have H >= 1 and W >= 1, got shape {x.shape}")
    return x


def _rois(fn, rois, x: Tensor) -> tuple[Tensor, np.ndarray]:
    """rois as a checked (K, 5) Tensor of x's dtype on x's device, batch indices checked,
    and a host copy of its values for the other checks.

    The Tensor is the caller's own when one was passed (so ``minidcn.onnx.export`` can see
    it is a graph input); each RoI Function's forward then keeps a copy of it for backward:
    a caller that reuses its buffer after forward (a proposal loop does) must not move the
    gradient to another image, or out of bounds (Numba checks none).
    """
    r = as_tensor(fn, "rois", rois, like=x)
    check_same_dtype(fn, input=x, rois=r)
    check_same_device(fn, input=x, rois=r)
    if r.ndim != 2 or r.shape[1] != 5:
        raise ValueError(f"{fn}: rois must have shape (K, 5), rows [batch_index, x1, y1, x2, y2], "
                         f"got {r.shape}")
    boxes = np.array(r.detach().to("cpu").numpy(), copy=True)
    index = boxes[:, 0]
    batch = x.shape[0]
    bad = ~((index >= 0) & (index < batch) & (index == np.floor(index)))  # NaN is bad too
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{fn}: rois[:, 0] must hold integer batch indices in [0, {batch}) "
                         f"(input batch size {batch}); row {k} has {float(index[k])}")
    return r, boxes


def _scale(fn, spatial_scale) -> float:
    scale = check_float(fn, "spatial_scale", spatial_scale)
    if scale <= 0:
        raise ValueError(f"{fn}: spatial_scale must be > 0, got {scale}")
    return scale


def _adaptive_grid(boxes, output_size, spatial_scale, aligned, dtype):
    """(grid_h, grid_w) of every RoI as a kernel computes them in ``dtype``: the box size
    (x2 s - shift) - (x1 s - shift), at least 1 unless aligned, over the bins, rounded up,
    never below 0, and 0 for a non-finite size.  Float arrays of whole numbers."""
    b, s = boxes.astype(dtype), dtype(spatial_scale)
    shift = dtype(0.5 if aligned else 0.0)
    grids = []
    with np.errstate(invalid="ignore", over="ignore"):
        for lo, hi, pooled in ((2, 4, output_size[0]), (1, 3, output_size[1])):
            size = (b[:, hi] * s - shift) - (b[:, lo] * s - shift)
            if not aligned:
                size = np.where(size < 1, dtype(1), size)  # NaN stays NaN
            grid = np.ceil(size / dtype(pooled))
            grids.append(np.where(np.isfinite(size), np.maximum(grid, 0), 0))
    return grids


def _check_samples_per_bin(fn, boxes, output_size, spatial_scale, sampling_ratio,
                           aligned) -> None:
    """A bin takes sampling_ratio**2 samples, or with sampling_ratio <= 0 an adaptive
    grid_h x grid_w: refuse more than MAX_SAMPLES_PER_BIN, or more along one axis.

    The grid is computed as the kernels compute it (numba and cuda in float64, the
    reference in the rois' dtype; the larger of the two counts), one axis at a time, so
    that no magnitude makes the count overflow, wrap or vanish (non-finite boxes pool to 0
    and take no samples)."""
    if sampling_ratio > 0:
        if sampling_ratio**2 > MAX_SAMPLES_PER_BIN:
            raise ValueError(f"{fn}: sampling_ratio={shown_int(sampling_ratio)} takes "
                             f"{shown_int(sampling_ratio**2)} samples per bin, more than "
                             f"{MAX_SAMPLES_PER_BIN}")
        return
    if boxes.shape[0] == 0:
        return
    grid_h, grid_w = (np.maximum(a, b) for a, b in zip(
        _adaptive_grid(boxes, output_size, spatial_scale, aligned, np.float64),
        _adaptive_grid(boxes, output_size, spatial_scale, aligned, boxes.dtype.type)))
    limit = MAX_SAMPLES_PER_BIN
    with np.errstate(over="ignore"):  # a product past the limit is refused anyway
        bad = (grid_h > limit) | (grid_w > limit) | (grid_h * grid_w > limit)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{fn}: rois row {k} {boxes[k, 1:].tolist()} times spatial_scale={spatial_scale} "
            f"would take a {grid_h[k]:.3g} x {grid_w[k]:.3g} grid of samples per bin "
            f"(sampling_ratio={sampling_ratio}: adaptive, output_size {tuple(output_size)}), "
            f"more than {limit}; pass sampling_ratio > 0, or check spatial_scale")


def _per_bin(fn, name, value, x: Tensor, rois: Tensor, channels, output_size) -> Tensor:
    """offset (K, 2, ph, pw) or mask (K, 1, ph, pw), of x's dtype and device."""
    t = as_tensor(fn, name, value, like=x)
    check_same_dtype(fn, input=x, **{name: t})
    check_same_device(fn, input=x, **{name: t})
    expected = (rois.shape[0], channels) + tuple(output_size)
    if t.shape != expected:
        layout = "(K, 2, ph, pw), channel 0 = x" if channels == 2 else "(K, 1, ph, pw)"
        raise ValueError(f"{fn}: {name} must have shape {expected} {layout} for {rois.shape[0]} "
                         f"rois and output_size {tuple(output_size)}, got {t.shape}")
    return t


def _offset(fn, offset, x: Tensor, rois: Tensor, output_size) -> Tensor:
    """The (K, 2, ph, pw) offset; None stands for zeros."""
    if offset is None:
        offset = Tensor(np.zeros((rois.shape[0], 2) + output_size), dtype=x.dtype).to(x.device)
    return _per_bin(fn, "offset", offset, x, rois, 2, output_size)


def _sampled_pool_args(fn, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """The checks shared by roi_align and the deformable poolings: (x, the op's own rois,
    output_size, spatial_scale, sampling_ratio), with any sampling_ratio <= 0 passed on as
    0 (all mean adaptive; a huge negative int would not fit the kernels' int64)."""
    x = _input(fn, input)
    r, boxes = _rois(fn, rois, x)
    output_size = pair(fn, "output_size", output_size, 1)
    check_elements(fn, "the output", (r.shape[0], x.shape[1]) + output_size, "output_size")
    check_elements(fn, "the kernels' per-bin offsets", (r.shape[0], 2) + output_size,
                   "output_size")
    scale = _scale(fn, spatial_scale)
    ratio = check_int(fn, "sampling_ratio", sampling_ratio)
    _check_samples_per_bin(fn, boxes, output_size, scale, ratio, aligned)
    return x, r, output_size, scale, max(ratio, 0)


# ---------------------------------------------------------------------------- public ops
def roi_pool(input, rois, output_size, spatial_scale=1.0) -> Tensor:
    """Max pooling over RoIs, like ``torchvision.ops.roi_pool`` (Fast R-CNN's RoIPool).

    Args:
        input: (B, C, H, W) feature maps.
        rois: (K, 5) rows [batch_index, x1, y1, x2, y2] (Tensor or array, not differentiable).
        output_size: int or (ph, pw), each >= 1.
        spatial_scale: image coordinates times this are feature-map coordinates (> 0).

    Returns:
        (K, C, ph, pw).  The box is rounded to whole pixels (C's round), at least 1 x 1, cut
        into ph x pw bins (floor / ceil edges, clipped to the image); each output is its
        bin's maximum, an empty bin gives 0.  The gradient goes to the (first) maximum.
        A RoI with a NaN coordinate gives 0 everywhere; scaled coordinates beyond +-2**31
        (infinities included) are clipped there.
    """
    fn = "roi_pool"
    x = _input(fn, input)
    r, _ = _rois(fn, rois, x)
    output_size = pair(fn, "output_size", output_size, 1)
    check_elements(fn, "the output", (r.shape[0], x.shape[1]) + output_size, "output_size")
    scale = _scale(fn, spatial_scale)
    return RoIPool.apply(x, rois=r.data, ops=kernels(x.device), output_size=output_size,
                         spatial_scale=scale)


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
              aligned=False) -> Tensor:
    """Bilinear RoI pooling, like ``torchvision.ops.roi_align`` (Mask R-CNN's RoIAlign).

    Args:
        input: (B, C, H, W) feature maps.
        rois: (K, 5) rows [batch_index, x1, y1, x2, y2] (Tensor or array, not differentiable).
        output_size: int or (ph, pw), each >= 1.
        spatial_scale: image coordinates times this are feature-map coordinates (> 0).
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi_size / bins).
        aligned: shift the box by -0.5 pixel (pixel centres at half-integers, the right
            choice); False keeps torchvision's legacy default, with boxes at least 1 x 1.

    Returns:
        (K, C, ph, pw): each output is the mean of the bilinear samples at
        (iy + 0.5) / grid_h, (ix + 0.5) / grid_w within its bin.  Differentiable in input.
        A RoI with a NaN or infinite coordinate gives 0 and no gradient.
    """
    fn = "roi_align"
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"{fn}: aligned must be a bool, got {type(aligned).__name__} {aligned!r}")
    x, r, output_size, scale, ratio = _sampled_pool_args(fn, input, rois, output_size,
                                                         spatial_scale, sampling_ratio,
                                                         bool(aligned))
    return RoIAlign.apply(x, rois=r.data, ops=kernels(x.device), output_size=output_size,
                          spatial_scale=scale, sampling_ratio=ratio, aligned=bool(aligned))


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1, mask=None) -> Tensor:
    """Deformable RoI pooling (DCN v1, section 2.2), modulated when a mask is given (DCN v2).

    Each bin (i, j) of RoI k is moved by ``gamma * offset[k, :, i, j] * (roi_w, roi_h)``
    (channel 0 of the offset is x, channel 1 is y: the reverse of deform_conv2d) and then
    pooled as roi_align(aligned=True) pools it; ``mask[k, 0, i, j]`` multiplies the result.
    With zero offsets and no mask this is exactly roi_align(aligned=True) with the same
    sampling_ratio.  Conventions and gradients are mmcv's ``DeformRoIPool``.

    Args:
        input: (B, C, H, W).
        rois: (K, 5) rows [batch_index, x1, y1, x2, y2] (Tensor or array, not differentiable).
        offset: (K, 2, ph, pw) normalised offsets, or None for zeros.
        output_size: int or (ph, pw), each >= 1.
        spatial_scale: > 0.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi_size / bins).
        gamma: the offset scale gamma (0.1 in the paper).
        mask: (K, 1, ph, pw) modulation, or None.

    Returns:
        (K, C, ph, pw), differentiable in input, offset and mask.  A NaN offset (or RoI)
        makes its samples read 0; they pass no gradient.
    """
    fn = "deform_roi_pool"
    x, r, output_size, scale, ratio = _sampled_pool_args(fn, input, rois, output_size,
                                                         spatial_scale, sampling_ratio, True)
    gamma = check_float(fn, "gamma", gamma)
    off = _offset(fn, offset, x, r, output_size)
    m = None if mask is None else _per_bin(fn, "mask", mask, x, r, 1, output_size)
    return DeformRoIPool.apply(x, off, m, rois=r.data, ops=kernels(x.device),
                               output_size=output_size, spatial_scale=scale,
                               sampling_ratio=ratio, gamma=gamma)


def deform_ps_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=2,
                       gamma=0.1) -> Tensor:
    """Deformable position-sensitive RoI pooling (DCN v1's R-FCN variant).

    ``input`` has C_out * ph * pw channels, one group of ph * pw "score maps" per output
    channel; bin (i, j) of output channel c reads only input channel ``(c * ph + i) * pw + j``
    (for a k x k output, ``(c k + i) k + j``).  Each bin is moved by
    ``gamma * offset[k, :, i, j] * (roi_w, roi_h)`` (channel 0 = x), one offset per bin
    shared by every output channel (class-agnostic), and sampled exactly as in
    :func:`deform_roi_pool` (aligned box, mean over the sampling grid).  No mask.

    Args:
        input: (B, C_out * ph * pw, H, W).
        rois: (K, 5) rows [batch_index, x1, y1, x2, y2] (Tensor or array, not differentiable).
        offset: (K, 2, ph, pw) normalised offsets, or None for zeros.
        output_size: int or (ph, pw), each >= 1.
        spatial_scale, sampling_ratio, gamma: as in :func:`deform_roi_pool`.

    Returns:
        (K, C_out, ph, pw), differentiable in input and offset.
    """
    fn = "deform_ps_roi_pool"
    x, r, output_size, scale, ratio = _sampled_pool_args(fn, input, rois, output_size,
                                                         spatial_scale, sampling_ratio, True)
    gamma = check_float(fn, "gamma", gamma)
    bins = output_size[0] * output_size[1]
    if x.shape[1] % bins:
        raise ValueError(f"{fn}: input channels must be C_out * ph * pw, a multiple of "
                         f"{output_size[0]} * {output_size[1]} = {bins}, got {x.shape[1]}")
    off = _offset(fn, offset, x, r, output_size)
    return DeformPSRoIPool.apply(x, off, rois=r.data, ops=kernels(x.device),
                                 output_size=output_size, spatial_scale=scale,
                                 sampling_ratio=ratio, gamma=gamma)
