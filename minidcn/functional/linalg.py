"""Matrix products: matmul (batched, broadcast like NumPy) and linear."""

from __future__ import annotations

import numpy as np

from ..function import Function
from ..tensor import Tensor
from ._validate import as_tensor, check_same_device, check_same_dtype
from .arith import unbroadcast
from .shape import reshape


def _swap_last(a):
    axes = list(range(a.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return a.transpose(tuple(axes))


class MatMul(Function):
    """out = a @ b over the last two axes;  da = g @ bᵀ,  db = aᵀ @ g (batch axes folded)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = unbroadcast(g @ _swap_last(b), a.shape, a.dtype) if ctx.needs_input_grad[0] else None
        db = unbroadcast(_swap_last(a) @ g, b.shape, b.dtype) if ctx.needs_input_grad[1] else None
        return da, db


def matmul(input, other) -> Tensor:
    """``torch.matmul``: 1-D operands are promoted to matrices and the extra axis dropped."""
    a = as_tensor("matmul", "input", input)
    b = as_tensor("matmul", "other", other, like=a)
    check_same_dtype("matmul", input=a, other=b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got {a.shape} and {b.shape}")
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: inner sizes differ: input {a.shape} has {a2.shape[-1]} columns, "
            f"other {b.shape} has {b2.shape[-2]} rows"
        )
    try:
        np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch shapes {a.shape[:-2]} and {b.shape[:-2]} do not broadcast") from None
    out = MatMul.apply(a2, b2)
    if a.ndim == 1:
        out = reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = reshape(out, out.shape[:-1])
    return out


def linear(input, weight, bias=None) -> Tensor:
    """y = x Wᵀ + b, with x (*, in_features), W (out_features, in_features), b (out_features,).

    A weight or bias given as an array takes the input's dtype and device, as a constant
    operand of mul does."""
    x = as_tensor("linear", "input", input)
    w = as_tensor("linear", "weight", weight, like=x)
    b = None if bias is None else as_tensor("linear", "bias", bias, like=x)
    check_same_dtype("linear", input=x, weight=w, bias=b)
    check_same_device("linear", input=x, weight=w, bias=b)
    if w.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: input's last axis must be in_features={w.shape[1]}, got shape {x.shape}"
        )
    out = matmul(x, w.T)
    if b is not None:
        if b.shape != (w.shape[0],):
            raise ValueError(f"linear: bias must have shape ({w.shape[0]},), got {b.shape}")
        out = out + b
    return out
