"""Activations: relu, sigmoid, tanh, gelu, softmax, log_softmax.

All but gelu are NumPy code that runs unchanged on host arrays and on CudaArrays (see
``minidcn.device``).  gelu needs erf, which NumPy lacks, so it is a kernel in every backend
(``backends/*/activation.py``, formula in ``backends/formulas/activation.py``).
"""

from __future__ import annotations

import numbers

import numpy as np

from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import as_tensor
from .reduction import normalize_dims


class ReLU(Function):
    """out = max(a, 0);  da = g where a > 0, else 0 (0 at a = 0, as in torch)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.maximum(a, 0)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g * (a > 0).astype(g.dtype)


class Sigmoid(Function):
    """out = 1 / (1 + e^-a), computed as (tanh(a/2) + 1) / 2, which cannot overflow;
    da = g out (1 - out)."""

    @staticmethod
    def forward(ctx, a):
        out = 0.5 * (np.tanh(0.5 * a) + 1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * out * (1 - out)


class Tanh(Function):
    """out = tanh a;  da = g (1 - out²)."""

    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * (1 - out * out)


class GELU(Function):
    """out = x Φ(x), Φ the standard normal CDF;  dx = g (Φ(x) + x φ(x)); both computed by
    the backend's kernels (``backends/*/activation.py``)."""

    @staticmethod
    def forward(ctx, a, ops):
        ctx.ops = ops
        ctx.save_for_backward(a)
        return ops.gelu_forward(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return ctx.ops.gelu_backward(g, a)


class Softmax(Function):
    """out = e^(a - m) / Σ e^(a - m), m = max a (the shift keeps e^ from overflowing);
    da = out (g - Σ g out)."""

    @staticmethod
    def forward(ctx, a, axis):
        if a.size == 0:  # an empty axis has no max; as in torch, the result is empty too
            out = a * 0
        else:
            e = np.exp(a - a.max(axis=axis, keepdims=True))
            out = e / e.sum(axis=axis, keepdims=True)
        ctx.axis = axis
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return out * (g - (g * out).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """out = a - m - log Σ e^(a - m), m = max a (the shift keeps e^ from overflowing);
    da = g - softmax(a) Σ g."""

    @staticmethod
    def forward(ctx, a, axis):
        if a.size == 0:  # an empty axis has no max; as in torch, the result is empty too
            out = a * 0
        else:
            z = a - a.max(axis=axis, keepdims=True)
            out = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        ctx.axis = axis
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g - np.exp(out) * g.sum(axis=ctx.axis, keepdims=True)


def relu(input) -> Tensor:
    return ReLU.apply(as_tensor("relu", "input", input))


def sigmoid(input) -> Tensor:
    return Sigmoid.apply(as_tensor("sigmoid", "input", input))


def tanh(input) -> Tensor:
    return Tanh.apply(as_tensor("tanh", "input", input))


def gelu(input) -> Tensor:
    """GELU(x) = x Φ(x) = ½ x (1 + erf(x / √2)), elementwise: torch's ``F.gelu`` in its exact
    (default, ``approximate='none'``) form; the tanh approximation is not offered.
    Computed in float64 and rounded once to the input's dtype."""
    t = as_tensor("gelu", "input", input)
    return GELU.apply(t, ops=kernels(t.device))


def _softmax_axis(fn, t, dim) -> int:
    if t.ndim == 0:
        raise ValueError(f"{fn}: input must be at least 1-D")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{fn}: dim must be one int, got {dim!r}")
    (axis,) = normalize_dims(fn, dim, t.ndim)
    return axis


def softmax(input, dim) -> Tensor:
    """e^x / Σ e^x along ``dim``, shifted by the maximum so that e^ cannot overflow; as
    ``torch.nn.functional.softmax`` (``dim`` is required here)."""
    t = as_tensor("softmax", "input", input)
    return Softmax.apply(t, axis=_softmax_axis("softmax", t, dim))


def log_softmax(input, dim) -> Tensor:
    """log(softmax(input)) along ``dim``, computed stably in one pass."""
    t = as_tensor("log_softmax", "input", input)
    return LogSoftmax.apply(t, axis=_softmax_axis("log_softmax", t, dim))
