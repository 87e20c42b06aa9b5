"""Elementwise arithmetic with NumPy broadcasting: add, sub, mul, div, neg, pow, exp, log.

Broadcasting copies an input along the axes it lacks, so the gradient of that input is the
sum over those axes: ``unbroadcast`` folds the output-shaped gradient back to the input.
"""

from __future__ import annotations

import numpy as np

from ..function import Function
from ..tensor import Tensor
from ._validate import as_tensor


def unbroadcast(grad, shape, dtype):
    """Sum ``grad`` over the axes broadcasting added or stretched, back to ``shape``."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    grad = grad.reshape(shape)
    return grad if grad.dtype == dtype else grad.astype(dtype)


def _operands(fn, a, b):
    """Both operands as Tensors; a constant takes the dtype and device of the tensor."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    a, b = as_tensor(fn, "first operand", a, like), as_tensor(fn, "second operand", b, like)
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{fn}: operand shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


class Add(Function):
    """out = a + b;  da = g,  db = g  (each folded back to its shape)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, a.dtype), (b.shape, b.dtype)
        return a + b

    @staticmethod
    def backward(ctx, g):
        (sa, ta), (sb, tb) = ctx.shapes
        return unbroadcast(g, sa, ta), unbroadcast(g, sb, tb)


class Sub(Function):
    """out = a - b;  da = g,  db = -g."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, a.dtype), (b.shape, b.dtype)
        return a - b

    @staticmethod
    def backward(ctx, g):
        (sa, ta), (sb, tb) = ctx.shapes
        return unbroadcast(g, sa, ta), unbroadcast(-g, sb, tb)


class Mul(Function):
    """out = a * b;  da = g * b,  db = g * a."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = unbroadcast(g * b, a.shape, a.dtype) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g * a, b.shape, b.dtype) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    """out = a / b;  da = g / b,  db = -g a / b²."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = unbroadcast(g / b, a.shape, a.dtype) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-g * a / (b * b), b.shape, b.dtype) if ctx.needs_input_grad[1] else None
        return da, db


class Neg(Function):
    """out = -a;  da = -g."""

    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """out = a ** b;  da = g b a^(b-1),  db = g a^b log(a)."""

    @staticmethod
    def forward(ctx, a, b):
        out = a**b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved
        da = db = None
        if ctx.needs_input_grad[0]:
            da = unbroadcast(g * b * a ** (b - 1), a.shape, a.dtype)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(g * out * np.log(a), b.shape, b.dtype)
        return da, db


class Exp(Function):
    """out = e^a;  da = g out."""

    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * out


class Log(Function):
    """out = ln a;  da = g / a."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g / a


class Cast(Function):
    """Change the float dtype; the gradient is cast back."""

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype)


def add(input, other) -> Tensor:
    return Add.apply(*_operands("add", input, other))


def sub(input, other) -> Tensor:
    return Sub.apply(*_operands("sub", input, other))


def mul(input, other) -> Tensor:
    return Mul.apply(*_operands("mul", input, other))


def div(input, other) -> Tensor:
    return Div.apply(*_operands("div", input, other))


def pow(input, exponent) -> Tensor:
    return Pow.apply(*_operands("pow", input, exponent))


def neg(input) -> Tensor:
    return Neg.apply(as_tensor("neg", "input", input))


def exp(input) -> Tensor:
    return Exp.apply(as_tensor("exp", "input", input))


def log(input) -> Tensor:
    return Log.apply(as_tensor("log", "input", input))


def cast(input, dtype) -> Tensor:
    """``input`` as float32 or float64 (differentiable)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"cast: dtype must be float32 or float64, got {dtype}")
    t = as_tensor("cast", "input", input)
    return t if t.dtype == dtype else Cast.apply(t, dtype=dtype)
