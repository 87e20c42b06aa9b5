"""conv2d: 2-D cross-correlation with stride, padding, dilation and groups, as in torch.

    y[b, o, i, j] = bias[o] + Σ_{c, u, v} w[o, c, u, v] · x[b, g·C_g + c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w]

with g = o // (C_out / groups) the group of output channel o, C_g = C_in / groups, and x
read as 0 outside the image.  The kernels (``backends/*/conv.py``) compute it and its
gradients; this module checks the arguments and records the op in the graph.
"""

from __future__ import annotations

from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import (
    as_tensor,
    check_elements,
    check_int,
    check_ndim,
    check_only_batch_empty,
    check_same_device,
    check_same_dtype,
    conv_output_size,
    pair,
)

__all__ = ["conv2d"]


class Conv2d(Function):
    """y = conv2d(x, w) + b; the gradients of x, w and b come from one backward kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, ops, stride, padding, dilation, groups):
        ctx.ops, ctx.params = ops, (stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        return ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved
        # A first layer's input needs no gradient: the kernels then skip its whole pass.
        return ctx.ops.conv2d_backward(grad_y, x, weight, *ctx.params,
                                       need_grad_input=ctx.needs_input_grad[0])


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D convolution (cross-correlation), named and defined like torch.nn.functional.conv2d.

    Args:
        input: (B, C_in, H, W); B may be 0 (an empty output and empty gradients, as in
            torch), no other axis.
        weight: (C_out, C_in / groups, kh, kw), no axis 0.
        bias: (C_out,) or None.
        stride, padding, dilation: an int or an (h, w) pair; stride and dilation >= 1,
            padding >= 0 (zeros added on every side).
        groups: input and output channels are split into ``groups`` independent convolutions.
        Every integer is at most 2**31 - 1, and neither the output nor the zero-padded
        input may exceed 2**30 elements (``_validate.MAX_OUTPUT_ELEMENTS``).

    Returns:
        (B, C_out, H_out, W_out) with H_out = (H + 2 p_h - (d_h (kh - 1) + 1)) // s_h + 1.
    """
    fn = "conv2d"
    x = as_tensor(fn, "input", input)
    w = as_tensor(fn, "weight", weight)
    b = None if bias is None else as_tensor(fn, "bias", bias)
    check_ndim(fn, "input", x, "(B, C_in, H, W)")
    check_ndim(fn, "weight", w, "(C_out, C_in / groups, kh, kw)")
    check_only_batch_empty(fn, "input", x)
    if b is not None:
        check_ndim(fn, "bias", b, "(C_out)")
    check_same_dtype(fn, input=x, weight=w, bias=b)
    device = check_same_device(fn, input=x, weight=w, bias=b)
    stride = pair(fn, "stride", stride, 1)
    padding = pair(fn, "padding", padding, 0)
    dilation = pair(fn, "dilation", dilation, 1)
    groups = check_int(fn, "groups", groups, 1)
    c_out, c_per_group, kh, kw = w.shape
    if min(w.shape) == 0:
        raise ValueError(f"{fn}: weight must have no zero-sized axis, got shape {w.shape}")
    if x.shape[1] != c_per_group * groups:
        raise ValueError(
            f"{fn}: input has {x.shape[1]} channels, expected weight.shape[1] * groups = "
            f"{c_per_group} * {groups} = {c_per_group * groups} (input {x.shape}, weight {w.shape})"
        )
    if c_out % groups:
        raise ValueError(
            f"{fn}: out channels weight.shape[0] = {c_out} must be divisible by groups = {groups}"
        )
    if b is not None and b.shape != (c_out,):
        raise ValueError(f"{fn}: bias must have shape ({c_out},) (one per out channel), got {b.shape}")
    out_h, out_w = conv_output_size(fn, x.shape[2:], (kh, kw), stride, padding, dilation)
    check_elements(fn, "the output", (x.shape[0], c_out, out_h, out_w), "padding and stride")
    check_elements(fn, "the padded input",
                   (x.shape[0], x.shape[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]),
                   "padding")
    return Conv2d.apply(x, w, b, ops=kernels(device), stride=stride, padding=padding,
                        dilation=dilation, groups=groups)
