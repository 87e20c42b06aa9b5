"""Convolution and pooling layers: Conv2d, MaxPool2d, AvgPool2d (torch.nn's names and defaults)."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional._validate import check_elements, check_int, pair
from . import init
from .layers import _layer_dtype
from .module import Module, Parameter

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d"]


class Conv2d(Module):
    """y = conv2d(x, weight, bias, stride, padding, dilation, groups), see minidcn.functional.conv2d.

    weight has shape (out_channels, in_channels / groups, kh, kw) and bias (out_channels,).
    Both start as torch's defaults: U(-1/√fan_in, 1/√fan_in) with fan_in =
    in_channels / groups · kh · kw, the weight drawn first, then the bias, from
    ``generator`` (or the generator ``minidcn.manual_seed`` resets).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, generator=None, dtype=np.float32):
        super().__init__()
        fn = "Conv2d"
        self.in_channels = check_int(fn, "in_channels", in_channels, 1)
        self.out_channels = check_int(fn, "out_channels", out_channels, 1)
        self.kernel_size = pair(fn, "kernel_size", kernel_size, 1)
        self.stride = pair(fn, "stride", stride, 1)
        self.padding = pair(fn, "padding", padding, 0)
        self.dilation = pair(fn, "dilation", dilation, 1)
        self.groups = check_int(fn, "groups", groups, 1)
        dtype = _layer_dtype(fn, dtype)
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise ValueError(f"{fn}: {name} = {channels} must be divisible by groups = {groups}")
        rng = init.generator(generator)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        shape = (out_channels, in_channels // groups) + self.kernel_size
        check_elements(fn, "the weight", shape, "in_channels, out_channels and kernel_size")
        self.weight = Parameter(init.kaiming_uniform_default(shape, fan_in, rng, dtype))
        self.bias = (
            Parameter(init.uniform((out_channels,), 1.0 / np.sqrt(fan_in), rng, dtype))
            if bias else None
        )

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class MaxPool2d(Module):
    """y = max_pool2d(x, kernel_size, stride, padding, dilation), see minidcn.functional."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """y = avg_pool2d(x, kernel_size, stride, padding, count_include_pad), see minidcn.functional."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")
