"""DCNv3 and DCNv4 cores: the deformable sampling of InternImage and of DCNv4, channels-last.

* :func:`dcnv3` is InternImage's ``dcnv3_core_pytorch`` (its CUDA op's numbers);
* :func:`dcnv4` is DCNv4's core: the same sampling, offsets and modulation packed in one tensor.

The formulas and conventions are in the reference kernel, ``backends/reference/dcnv3.py``
(the same file name in ``numba_cpu/`` and ``cuda/``); this module checks the arguments (before
any kernel runs: Numba checks no bounds) and records one op in the graph, with the kernels'
argument order, so nothing is reordered on the way.
"""

from __future__ import annotations

import numpy as np

from ..arrays import zeros
from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import (
    as_tensor,
    check_elements,
    check_float,
    check_int,
    check_ndim,
    check_only_batch_empty,
    check_same_device,
    check_same_dtype,
    conv_output_size,
    pair,
)

__all__ = ["dcnv3", "dcnv4"]


class DCNv3Core(Function):
    """out = Σ_p m_p x(y_p, x_p) per group; gradients for input, offset and mask.

    ``ops`` is the backend that ``backends.kernels(device)`` picked (its ``dcnv3.py``).  An
    empty batch (N = 0) skips the kernels, as deform_conv2d does: the output is empty and so
    is every gradient."""

    @staticmethod
    def forward(ctx, x, offset, mask, ops, kernel_size, stride, padding, dilation, group,
                offset_scale, remove_center):
        ctx.ops = ops
        ctx.params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
        ctx.save_for_backward(x, offset, mask)
        if x.shape[0] == 0:
            return zeros(tuple(offset.shape[:3]) + (x.shape[3],), x.dtype, like=x)
        return ops.dcnv3_forward(x, offset, mask, *ctx.params)

    @staticmethod
    def backward(ctx, grad_out):
        x, offset, mask = ctx.saved
        if x.shape[0] == 0:
            return tuple(zeros(a.shape, x.dtype, like=x) for a in (x, offset, mask))
        return ctx.ops.dcnv3_backward(grad_out, x, offset, mask, *ctx.params)


class DCNv4Core(Function):
    """DCNv3's sum with offsets and modulation read from offset_mask; gradients for input and
    offset_mask (0 on its padding channels).  Empty batch as :class:`DCNv3Core`."""

    @staticmethod
    def forward(ctx, x, offset_mask, ops, kernel_size, stride, padding, dilation, group,
                offset_scale, remove_center, softmax):
        ctx.ops = ops
        ctx.params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center,
                      softmax)
        ctx.save_for_backward(x, offset_mask)
        if x.shape[0] == 0:
            return zeros(tuple(offset_mask.shape[:3]) + (x.shape[3],), x.dtype, like=x)
        return ops.dcnv4_forward(x, offset_mask, *ctx.params)

    @staticmethod
    def backward(ctx, grad_out):
        x, offset_mask = ctx.saved
        if x.shape[0] == 0:
            return tuple(zeros(a.shape, x.dtype, like=x) for a in (x, offset_mask))
        return ctx.ops.dcnv4_backward(grad_out, x, offset_mask, *ctx.params)


def _check_bool(fn: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool (True or False), got "
                        f"{type(value).__name__} {value!r}")
    return bool(value)


def _geometry(fn, x, kernel_size, stride, padding, dilation, group, offset_scale, remove_center):
    """The checked arguments shared by dcnv3 and dcnv4: (params, P, (H_out, W_out)).

    ``params`` is the kernels' tail (kernel_size, stride, padding, dilation, group,
    offset_scale, remove_center), sizes as (h, w) pairs.
    """
    check_ndim(fn, "input", x, "(N, H, W, group * D)")
    check_only_batch_empty(fn, "input", x)
    kernel_size = pair(fn, "kernel_size", kernel_size, 1)
    stride = pair(fn, "stride", stride, 1)
    padding = pair(fn, "padding", padding, 0)
    dilation = pair(fn, "dilation", dilation, 1)
    group = check_int(fn, "group", group, 1)
    offset_scale = check_float(fn, "offset_scale", offset_scale)
    remove_center = _check_bool(fn, "remove_center", remove_center)
    kh, kw = kernel_size
    if remove_center and (kh != kw or kh % 2 == 0 or kh < 3):
        raise ValueError(f"{fn}: remove_center needs an odd square kernel of at least 3 x 3 (a "
                         f"centre to remove and points left), got kernel_size {kernel_size}")
    channels = x.shape[3]
    if channels % group:
        raise ValueError(f"{fn}: input channels {channels} must be a multiple of group {group} "
                         f"(group * D channels), got input shape {x.shape}")
    out_h, out_w = conv_output_size(fn, x.shape[1:3], kernel_size, stride, padding, dilation)
    check_elements(fn, "the output", (x.shape[0], out_h, out_w, channels), "padding and stride")
    check_elements(fn, "the padded input", (x.shape[0], x.shape[1] + 2, x.shape[2] + 2, channels),
                   "input's size")
    points = kh * kw - int(remove_center)
    params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    return params, points, (out_h, out_w)


def _check_shape(fn, name, t, expected, layout):
    if t.shape != expected:
        raise ValueError(f"{fn}: {name} must have shape {expected} {layout}, got {t.shape}")


def dcnv3(input, offset, mask, kernel_size=3, stride=1, padding=1, dilation=1, group=1,
          offset_scale=1.0, remove_center=False) -> Tensor:
    """InternImage's DCNv3 core: a depthwise deformable sampling with modulation, no weight.

        out[n, oy, ox, g·D + c] = Σ_p mask[n, oy, ox, g·P + p] · input[n, :, :, g·D + c](y_p, x_p)

        y_p = oy s_h - p_h + c_h + s (j d_h - c_h + dy),  x_p = ox s_w - p_w + c_w + s (i d_w - c_w + dx)

    with c_h = d_h (kh - 1) // 2, c_w likewise, s = offset_scale and (i, j) the column and row
    of kernel point p, x-major (p = i kh + j).  x(y, x) is bilinear sampling with zero padding;
    NaN, infinite and huge locations read 0 and get gradient 0.

    Args:
        input: (N, H, W, group · D), channels-last; N may be 0 (an empty output and empty
            gradients), no other axis.
        offset: (N, H_out, W_out, group · P · 2): channel (g·P + p)·2 is dx of point p of
            group g and the next is dy (deform_conv2d has them the other way round).
        mask: (N, H_out, W_out, group · P): channel g·P + p scales point p of group g, used as
            given (InternImage's module applies a softmax over each group's P points first).
        kernel_size, stride, padding, dilation: an int or an (h, w) pair; kernel_size, stride
            and dilation >= 1, padding >= 0, each at most 2**31 - 1.
        group: G >= 1, dividing the input channels.
        offset_scale: a finite real s; the offsets, and the kernel grid about its centre, are
            scaled by it.
        remove_center: leave out the kernel's centre point (odd square kernels of at least
            3 x 3), so P = kh·kw - 1; otherwise P = kh·kw.

    Returns:
        (N, H_out, W_out, group · D) with H_out = (H + 2 p_h - (d_h (kh - 1) + 1)) // s_h + 1.
    """
    fn = "dcnv3"
    x = as_tensor(fn, "input", input)
    off = as_tensor(fn, "offset", offset)
    m = as_tensor(fn, "mask", mask)
    check_ndim(fn, "offset", off, "(N, H_out, W_out, group * P * 2)")
    check_ndim(fn, "mask", m, "(N, H_out, W_out, group * P)")
    check_same_dtype(fn, input=x, offset=off, mask=m)
    device = check_same_device(fn, input=x, offset=off, mask=m)
    params, points, (out_h, out_w) = _geometry(fn, x, kernel_size, stride, padding, dilation,
                                               group, offset_scale, remove_center)
    group = params[4]
    _check_shape(fn, "offset", off, (x.shape[0], out_h, out_w, group * points * 2),
                 f"(N, H_out, W_out, group {group} * P {points} * 2)")
    _check_shape(fn, "mask", m, (x.shape[0], out_h, out_w, group * points),
                 f"(N, H_out, W_out, group {group} * P {points})")
    return DCNv3Core.apply(x, off, m, ops=kernels(device), kernel_size=params[0],
                           stride=params[1], padding=params[2], dilation=params[3], group=group,
                           offset_scale=params[5], remove_center=params[6])


def dcnv4(input, offset_mask, kernel_size=3, stride=1, padding=1, dilation=1, group=1,
          offset_scale=1.0, remove_center=False, softmax=False) -> Tensor:
    """DCNv4's core: :func:`dcnv3`'s sampling, with offsets and modulation in one tensor.

    Args:
        input: (N, H, W, group · D), as for :func:`dcnv3`.
        offset_mask: (N, H_out, W_out, M) with M >= group · 3P.  Group g's block starts at
            channel g·3P: its 2P offsets as (dx, dy) pairs in kernel-point order, then its P
            modulation scalars.  Channels from group · 3P to M (DCNv4 pads M to a multiple
            of 8) are ignored and get gradient 0.
        kernel_size, stride, padding, dilation, group, offset_scale, remove_center: as for
            :func:`dcnv3`.
        softmax: False (DCNv4's choice) uses the modulation scalars raw, unbounded; True
            normalises them with a softmax over each group's P points first, as DCNv3's
            module does.

    Returns:
        (N, H_out, W_out, group · D).
    """
    fn = "dcnv4"
    x = as_tensor(fn, "input", input)
    om = as_tensor(fn, "offset_mask", offset_mask)
    check_ndim(fn, "offset_mask", om, "(N, H_out, W_out, M)")
    check_same_dtype(fn, input=x, offset_mask=om)
    device = check_same_device(fn, input=x, offset_mask=om)
    params, points, (out_h, out_w) = _geometry(fn, x, kernel_size, stride, padding, dilation,
                                               group, offset_scale, remove_center)
    softmax = _check_bool(fn, "softmax", softmax)
    group = params[4]
    needed = group * 3 * points
    if om.shape[:3] != (x.shape[0], out_h, out_w) or om.shape[3] < needed:
        raise ValueError(
            f"{fn}: offset_mask must have shape ({x.shape[0]}, {out_h}, {out_w}, M) (N, H_out, "
            f"W_out, M) with M >= group {group} * 3 * P {points} = {needed}, got {om.shape}")
    return DCNv4Core.apply(x, om, ops=kernels(device), kernel_size=params[0], stride=params[1],
                           padding=params[2], dilation=params[3], group=group,
                           offset_scale=params[5], remove_center=params[6], softmax=softmax)
