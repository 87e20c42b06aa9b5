"""max_pool2d and avg_pool2d over (B, C, H, W), with torch.nn.functional's arguments and semantics.

Output pixel (i, j) pools the window of rows i·s_h - p_h + u·d_h (u < kh) and columns
j·s_w - p_w + v·d_w (v < kw); H_out = (H + 2 p_h - (d_h (kh - 1) + 1)) // s_h + 1.

* max_pool2d: the maximum of the window's pixels inside the image (padding never wins); its
  gradient goes to that pixel alone (the first maximum in row-major order; NaN propagates).
* avg_pool2d (no dilation): the window sum over kh·kw (``count_include_pad=True``, padding
  counted as zeros) or over the number of pixels inside the image.

``ceil_mode=True`` is not supported (a ValueError says so): the kernel signatures fix the
output size to the floor formula above.  As in torch, padding may be at most half the
kernel size, the batch may be empty (an empty output and empty gradients) but not the
channels or the image, and every integer is at most 2**31 - 1 (torch's limit too).  The
kernels visit only the window points inside the image, so a window far larger than the
image costs no more than the image.  A window that falls entirely in the padding
(possible only with dilation) is a ValueError: torch reads outside the input there.  The
kernels are in ``backends/*/pool.py``.
"""

from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import (as_tensor, check_ndim, check_only_batch_empty,
                        conv_output_size, pair)

__all__ = ["max_pool2d", "avg_pool2d"]


class MaxPool2d(Function):
    """y = window maximum; grad_x gets each window's gradient at its argmax."""

    @staticmethod
    def forward(ctx, x, ops, kernel_size, stride, padding, dilation):
        y, argmax = ops.max_pool2d_forward(x, kernel_size, stride, padding, dilation)
        ctx.ops, ctx.input_shape = ops, tuple(x.shape)
        ctx.save_for_backward(argmax)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (argmax,) = ctx.saved
        return ctx.ops.max_pool2d_backward(grad_y, argmax, ctx.input_shape)


class AvgPool2d(Function):
    """y = window sum / divisor; every window pixel gets grad_y / divisor."""

    @staticmethod
    def forward(ctx, x, ops, kernel_size, stride, padding, count_include_pad):
        ctx.ops, ctx.input_shape = ops, tuple(x.shape)
        ctx.params = (kernel_size, stride, padding, count_include_pad)
        return ops.avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad)

    @staticmethod
    def backward(ctx, grad_y):
        return ctx.ops.avg_pool2d_backward(grad_y, ctx.input_shape, *ctx.params)


def _pool_arguments(fn, input, kernel_size, stride, padding, dilation, ceil_mode):
    """The checked (x, kernel, stride, padding, dilation) of a pooling call."""
    x = as_tensor(fn, "input", input)
    check_ndim(fn, "input", x, "(B, C, H, W)")
    check_only_batch_empty(fn, "input", x)
    kernel = pair(fn, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair(fn, "stride", stride, 1)
    padding = pair(fn, "padding", padding, 0)
    dilation = pair(fn, "dilation", dilation, 1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{fn}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if ceil_mode:
        raise ValueError(f"{fn}: ceil_mode=True is not supported, expected ceil_mode=False "
                         "(the pooling kernels compute the floor-mode output size)")
    for k, p, axis in zip(kernel, padding, ("height", "width")):
        if p > k // 2:
            raise ValueError(f"{fn}: padding must be at most half the kernel size, got "
                             f"{axis} padding {p} for kernel {axis} {k} (at most {k // 2})")
    out = conv_output_size(fn, x.shape[2:], kernel, stride, padding, dilation)
    for n, k, s, p, d, o, axis in zip(x.shape[2:], kernel, stride, padding, dilation, out,
                                      ("height", "width")):
        if _has_empty_window(n, k, s, p, d, o):
            raise ValueError(
                f"{fn}: some windows along the {axis} fall entirely in the padding "
                f"(input {axis} {n}, kernel {k}, stride {s}, padding {p}, dilation {d})"
            )
    return x, kernel, stride, padding, dilation


def _has_empty_window(size, kernel, stride, padding, dilation, out) -> bool:
    """Whether some window i has none of its positions i·s - p + u·d inside [0, size).

    Window i starts at a = i·s - p; its first position at or after 0 is kernel point
    u0 = max(0, ceil(-a / d)), and the window touches the image exactly when u0 < k and
    a + u0·d < size.  Arithmetic over the windows only (O(out) memory, nothing per kernel
    point).  With padding <= kernel // 2 this needs dilation > 1 (torch reads out of
    bounds there).
    """
    start = np.arange(out, dtype=np.int64) * stride - padding
    first = np.maximum(0, -(start // dilation))  # ceil(-a / d) = -floor(a / d)
    touches = (first < kernel) & (start + first * dilation < size)
    return not touches.all()


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> Tensor:
    """2-D max pooling, like torch.nn.functional.max_pool2d.

    Args:
        input: (B, C, H, W); B may be 0.
        kernel_size: an int or an (h, w) pair.
        stride: defaults to ``kernel_size``.
        padding: implicit padding on every side, never selected; at most kernel_size // 2.
        dilation: spacing between window pixels.
        ceil_mode: only False is supported.

    Returns:
        (B, C, H_out, W_out).
    """
    fn = "max_pool2d"
    x, kernel, stride, padding, dilation = _pool_arguments(
        fn, input, kernel_size, stride, padding, dilation, ceil_mode)
    return MaxPool2d.apply(x, ops=kernels(x.device), kernel_size=kernel, stride=stride,
                           padding=padding, dilation=dilation)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True) -> Tensor:
    """2-D average pooling, like torch.nn.functional.avg_pool2d.

    Args:
        input: (B, C, H, W); B may be 0.
        kernel_size: an int or an (h, w) pair.
        stride: defaults to ``kernel_size``.
        padding: zeros on every side; at most kernel_size // 2.
        ceil_mode: only False is supported.
        count_include_pad: divide by kh·kw (True) or by the pixels inside the image (False).

    Returns:
        (B, C, H_out, W_out).
    """
    fn = "avg_pool2d"
    x, kernel, stride, padding, _ = _pool_arguments(
        fn, input, kernel_size, stride, padding, 1, ceil_mode)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{fn}: count_include_pad must be a bool, "
                        f"got {type(count_include_pad).__name__}")
    return AvgPool2d.apply(x, ops=kernels(x.device), kernel_size=kernel, stride=stride,
                           padding=padding, count_include_pad=bool(count_include_pad))
