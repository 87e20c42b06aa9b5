"""Reductions: sum and mean over some axes.

The gradient of a sum copies the output gradient back along every summed axis; a mean
divides it by the number of summed elements.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..function import Function
from ..tensor import Tensor
from ._validate import as_tensor


def normalize_dims(fn: str, dim, ndim: int) -> tuple:
    """``dim`` (None, an int or a sequence of ints, negatives allowed) as sorted axes."""
    if dim is None:
        return tuple(range(ndim))
    if not isinstance(dim, (numbers.Integral, tuple, list)):
        raise TypeError(f"{fn}: dim must be an int or a tuple of ints, got {dim!r}")
    dims = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{fn}: dim must be ints, got {d!r}")
        if not -ndim <= d < max(ndim, 1):
            raise ValueError(f"{fn}: dim {d} is out of range for a {ndim}-D tensor")
        out.append(int(d) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{fn}: dim {dim!r} repeats an axis")
    return tuple(sorted(out)) if ndim else ()  # a 0-d tensor accepts dim 0 / -1, as in torch


class Sum(Function):
    """out = Σ_axes a;  da = g broadcast back over the summed axes."""

    @staticmethod
    def forward(ctx, a, axes, keepdim):
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        return a.sum(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdim:
            kept = tuple(1 if i in ctx.axes else n for i, n in enumerate(ctx.shape))
            g = g.reshape(kept)
        return np.broadcast_to(g, ctx.shape).copy()


def sum(input, dim=None, keepdim=False) -> Tensor:
    """Sum over ``dim`` (all axes when None), like ``torch.sum``."""
    t = as_tensor("sum", "input", input)
    return Sum.apply(t, axes=normalize_dims("sum", dim, t.ndim), keepdim=bool(keepdim))


def mean(input, dim=None, keepdim=False) -> Tensor:
    """Mean over ``dim`` (all axes when None): the sum divided by the element count."""
    t = as_tensor("mean", "input", input)
    axes = normalize_dims("mean", dim, t.ndim)
    count = int(np.prod([t.shape[a] for a in axes], dtype=np.int64)) if t.ndim else 1
    if count == 0:
        raise ValueError(f"mean: reducing over an empty axis of shape {t.shape}")
    return Sum.apply(t, axes=axes, keepdim=bool(keepdim)) / count
