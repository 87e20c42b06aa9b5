"""Deformable convolution (DCN v1 / v2), as in torchvision.ops.

* :func:`deform_conv2d` is ``torchvision.ops.deform_conv2d``: same arguments, same layouts,
  same numbers;
* :func:`sampling_locations` turns an offset tensor into the absolute positions the
  convolution reads, p0 + p_k + Δp_k.

The formulas and conventions are in the reference kernel, ``backends/reference/deform_conv.py``
(the same file name in ``numba_cpu/`` and ``cuda/``); this module checks the arguments (before
any kernel runs: Numba checks no bounds) and records the op in the graph, with the kernels'
argument order (x, offset, mask, weight, bias), so nothing is reordered on the way.
"""

from __future__ import annotations

import numpy as np

from ..arrays import zeros
from ..backends import kernels
from ..backends.reference import deform_conv as reference_deform_conv
from ..function import Function
from ..tensor import Tensor
from ._validate import (
    as_tensor,
    check_elements,
    check_ndim,
    check_only_batch_empty,
    check_same_device,
    check_same_dtype,
    conv_output_size,
    pair,
)

__all__ = ["deform_conv2d", "sampling_locations"]


class DeformConv2d(Function):
    """y(p0) = Σ_k w_k · x(p0 + p_k + Δp_k) · Δm_k + b; gradients for all five inputs.

    ``ops`` is the backend that ``backends.kernels(device)`` picked: its ``deform_conv.py``
    (``backends/numba_cpu/`` by default, ``reference/`` or ``cuda/``) holds both kernels, with
    this argument order and gradients in the same order.  An empty batch (B = 0) skips the
    kernels, as torchvision's do: the output is empty and every gradient is zero (empty for
    input, offset and mask)."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, ops, stride, padding, dilation, groups,
                offset_groups):
        ctx.ops, ctx.params = ops, (stride, padding, dilation, groups, offset_groups)
        ctx.save_for_backward(x, offset, mask, weight)
        if x.shape[0] == 0:
            return zeros((0, weight.shape[0]) + tuple(offset.shape[2:]), x.dtype, like=x)
        return ops.deform_conv2d_forward(x, offset, mask, weight, bias, *ctx.params)

    @staticmethod
    def backward(ctx, grad_y):
        x, offset, mask, weight = ctx.saved
        if x.shape[0] == 0:
            grad_x, grad_offset, grad_weight, grad_bias = (
                zeros(shape, x.dtype, like=x)
                for shape in (x.shape, offset.shape, weight.shape, weight.shape[:1]))
            grad_mask = None if mask is None else zeros(mask.shape, x.dtype, like=x)
            return grad_x, grad_offset, grad_mask, grad_weight, grad_bias
        return ctx.ops.deform_conv2d_backward(grad_y, x, offset, mask, weight, *ctx.params)


def _check_not_empty(fn: str, name: str, t: Tensor) -> None:
    if 0 in t.shape:
        raise ValueError(f"{fn}: {name} must have no zero-sized axis, got shape {t.shape}")


def _offset_groups(fn: str, offset_shape: tuple, kh: int, kw: int, expected=None) -> int:
    """G_off from offset.shape[1] = 2 · G_off · kh · kw; ValueError if it does not divide, or
    if it is not ``expected`` (the offset groups a DeformConv2d layer was built with)."""
    per_group, channels = 2 * kh * kw, offset_shape[1]
    if expected is not None and channels != expected * per_group:
        raise ValueError(
            f"{fn}: offset must have shape (B, {expected * per_group}, H_out, W_out) "
            f"(2 * offset_groups {expected} * {kh} * {kw} channels), got {offset_shape}")
    if channels == 0 or channels % per_group:
        raise ValueError(
            f"{fn}: offset must have 2 * offset_groups * kh * kw channels, a positive multiple "
            f"of 2 * {kh} * {kw} = {per_group}, got {channels}")
    return channels // per_group


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                  mask=None) -> Tensor:
    """Deformable convolution v1 (``mask=None``) and v2, like ``torchvision.ops.deform_conv2d``.

        y(p0) = Σ_k w_k · x(p0 + p_k + Δp_k) · Δm_k + b

    Args:
        input: (B, C_in, H, W); B may be 0 (an empty output and empty gradients, as in
            torchvision), no other axis.
        offset: (B, 2 · G_off · kh · kw, H_out, W_out); channel g·2·kh·kw + 2k is dy and the
            next one dx, for offset group g and kernel point k = i·kw + j.  Input channel c
            uses offset group c // (C_in / G_off).  G_off is inferred from the channels.
        weight: (C_out, C_in / groups, kh, kw); groups = C_in / weight.shape[1].
        bias: (C_out,) or None.
        stride, padding, dilation: an int or an (h, w) pair; stride and dilation >= 1,
            padding >= 0, each at most 2**31 - 1; the output may have at most 2**30
            elements.
        mask: (B, G_off · kh · kw, H_out, W_out) or None; channel g·kh·kw + k multiplies the
            value sampled for kernel point k of offset group g (DCNv2 modulation).

    Returns:
        (B, C_out, H_out, W_out) with H_out = (H + 2 p_h - (d_h (kh - 1) + 1)) // s_h + 1.
        Output (oy, ox) and kernel point (i, j) sample at
        (oy s_h - p_h + i d_h + dy, ox s_w - p_w + j d_w + dx).
    """
    return checked_deform_conv2d("deform_conv2d", input, offset, weight, bias, stride, padding,
                                 dilation, mask)


def checked_deform_conv2d(fn, input, offset, weight, bias, stride, padding, dilation, mask,
                          offset_groups=None) -> Tensor:
    """:func:`deform_conv2d`'s checks and op, its errors naming ``fn``: the one path that
    ``nn.DeformConv2d`` shares, passing the ``offset_groups`` it was built with (the function
    infers them from offset.shape[1])."""
    x = as_tensor(fn, "input", input)
    off = as_tensor(fn, "offset", offset)
    w = as_tensor(fn, "weight", weight)
    b = None if bias is None else as_tensor(fn, "bias", bias)
    m = None if mask is None else as_tensor(fn, "mask", mask)
    check_ndim(fn, "input", x, "(B, C_in, H, W)")
    check_ndim(fn, "offset", off, "(B, 2 * offset_groups * kh * kw, H_out, W_out)")
    check_ndim(fn, "weight", w, "(C_out, C_in / groups, kh, kw)")
    if b is not None:
        check_ndim(fn, "bias", b, "(C_out)")
    if m is not None:
        check_ndim(fn, "mask", m, "(B, offset_groups * kh * kw, H_out, W_out)")
    check_same_dtype(fn, input=x, offset=off, weight=w, bias=b, mask=m)
    device = check_same_device(fn, input=x, offset=off, weight=w, bias=b, mask=m)
    stride = pair(fn, "stride", stride, 1)
    padding = pair(fn, "padding", padding, 0)
    dilation = pair(fn, "dilation", dilation, 1)
    check_only_batch_empty(fn, "input", x)
    _check_not_empty(fn, "weight", w)

    batch, in_channels = x.shape[:2]
    out_channels, per_group, kh, kw = w.shape
    if in_channels % per_group:
        raise ValueError(
            f"{fn}: input channels {in_channels} must be a multiple of weight.shape[1] = "
            f"{per_group} (C_in / groups), got input {x.shape} and weight {w.shape}")
    groups = in_channels // per_group
    if out_channels % groups:
        raise ValueError(f"{fn}: out channels weight.shape[0] = {out_channels} must be divisible "
                         f"by groups = C_in / weight.shape[1] = {groups}")
    offset_groups = _offset_groups(fn, off.shape, kh, kw, offset_groups)
    if in_channels % offset_groups:
        raise ValueError(
            f"{fn}: input channels {in_channels} must be divisible by the offset groups "
            f"{offset_groups} (= offset.shape[1] {off.shape[1]} / (2 * {kh} * {kw}))")
    for name, t in (("offset", off), ("mask", m)):
        if t is not None and t.shape[0] != batch:
            raise ValueError(f"{fn}: {name} has batch size {t.shape[0]}, expected input's batch "
                             f"size {batch} (input {x.shape}, {name} {t.shape})")
    out_h, out_w = conv_output_size(fn, x.shape[2:], (kh, kw), stride, padding, dilation)
    check_elements(fn, "the output", (batch, out_channels, out_h, out_w), "padding and stride")
    expected = (batch, 2 * offset_groups * kh * kw, out_h, out_w)
    if off.shape != expected:
        raise ValueError(f"{fn}: offset must have shape {expected} (B, 2 * offset_groups * kh "
                         f"* kw, H_out, W_out), got {off.shape}")
    if m is not None and m.shape != (batch, offset_groups * kh * kw, out_h, out_w):
        raise ValueError(
            f"{fn}: mask must have shape {(batch, offset_groups * kh * kw, out_h, out_w)} "
            f"(B, offset_groups * kh * kw, H_out, W_out) with offset_groups = {offset_groups}, "
            f"got {m.shape}")
    if b is not None and b.shape != (out_channels,):
        raise ValueError(f"{fn}: bias must have shape ({out_channels},) (one per out channel), "
                         f"got {b.shape}")
    return DeformConv2d.apply(x, off, m, w, b, ops=kernels(device), stride=stride, padding=padding,
                              dilation=dilation, groups=groups, offset_groups=offset_groups)


def sampling_locations(offset, kernel_size, stride=1, padding=0, dilation=1) -> np.ndarray:
    """The absolute positions p0 + p_k + Δp_k that ``deform_conv2d`` samples.

    Args:
        offset: (B, 2 · G_off · kh · kw, H_out, W_out), as for :func:`deform_conv2d`.
        kernel_size, stride, padding, dilation: ints or (h, w) pairs, as for the convolution.

    Returns:
        A host NumPy array (B, G_off, kh · kw, H_out, W_out, 2) of (y, x) input coordinates,
        kernel points in row-major order.  With zero offsets it is the regular grid
        (oy s_h - p_h + i d_h, ox s_w - p_w + j d_w).  Not differentiable.
    """
    fn = "sampling_locations"
    off = as_tensor(fn, "offset", offset)
    check_ndim(fn, "offset", off, "(B, 2 * offset_groups * kh * kw, H_out, W_out)")
    kernel_size = pair(fn, "kernel_size", kernel_size, 1)
    stride = pair(fn, "stride", stride, 1)
    padding = pair(fn, "padding", padding, 0)
    dilation = pair(fn, "dilation", dilation, 1)
    _offset_groups(fn, off.shape, *kernel_size)
    host = off.detach().to("cpu").numpy()
    return reference_deform_conv.sampling_locations(host, kernel_size, stride, padding, dilation)
