"""Ops that move elements without changing them: reshape, permute, transpose, getitem, cat.

Their gradients move the output gradient back the same way: reshape it back, apply the
inverse permutation, scatter-add it into the positions the index picked, or cut it into
the pieces that were joined.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..arrays import zeros
from ..function import Function
from ..tensor import Tensor
from ._validate import as_tensor


class Reshape(Function):
    """out = a viewed with a new shape;  da = g reshaped back."""

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    """out[i_p0, i_p1, ...] = a[i_0, i_1, ...];  da = g permuted by the inverse."""

    @staticmethod
    def forward(ctx, a, dims):
        ctx.inverse = tuple(np.argsort(dims))
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(ctx.inverse)


class GetItem(Function):
    """out = a[index];  da = zeros with g added at the indexed positions (repeats add up)."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        da = zeros(ctx.shape, ctx.dtype, like=g)
        np.add.at(da, ctx.index, g)
        return da


class Cat(Function):
    """out = the inputs joined along ``dim``, in order;  d(input i) = g[..., start_i:end_i, ...]."""

    @staticmethod
    def forward(ctx, *parts, dim):
        sizes = [p.shape[dim] for p in parts]
        ctx.pieces = [(slice(None),) * dim + (slice(start, start + size),)
                      for start, size in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]
        shape = parts[0].shape[:dim] + (sum(sizes),) + parts[0].shape[dim + 1:]
        out = zeros(shape, parts[0].dtype, like=parts[0])
        for piece, part in zip(ctx.pieces, parts):
            out[piece] = part
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(g[piece] for piece in ctx.pieces)


def _is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def reshape(input, shape) -> Tensor:
    t = as_tensor("reshape", "input", input)
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if any(not _is_int(s) for s in shape):
        raise TypeError(f"reshape: shape must be ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    known = [s for s in shape if s != -1]
    if shape.count(-1) > 1 or any(s < 0 for s in known):
        raise ValueError(f"reshape: shape {shape} may hold at most one -1 and no other negative")
    total, rest = t.numel(), math.prod(known)  # Python ints: a huge entry cannot wrap
    fits = (rest > 0 and total % rest == 0) if -1 in shape else (rest == total)
    if not fits:
        raise ValueError(f"reshape: cannot view {t.numel()} elements {t.shape} as shape {shape}")
    if -1 in shape:
        shape = tuple(total // rest if s == -1 else s for s in shape)
    return Reshape.apply(t, shape=shape)


def permute(input, dims) -> Tensor:
    t = as_tensor("permute", "input", input)
    dims = tuple(dims)
    if any(not _is_int(d) for d in dims):
        raise TypeError(f"permute: dims must be ints, got {dims!r}")
    if any(not -t.ndim <= d < t.ndim for d in dims):
        raise ValueError(f"permute: dims {tuple(dims)} is not a permutation of the {t.ndim} axes")
    dims = tuple(int(d) % t.ndim for d in dims)
    if sorted(dims) != list(range(t.ndim)):
        raise ValueError(f"permute: dims {dims} is not a permutation of the {t.ndim} axes")
    return Permute.apply(t, dims=dims)


def transpose(input, dim0, dim1) -> Tensor:
    t = as_tensor("transpose", "input", input)
    for name, d in (("dim0", dim0), ("dim1", dim1)):
        if not _is_int(d):
            raise TypeError(f"transpose: {name} must be an int, got {type(d).__name__} {d!r}")
        if not -t.ndim <= d < t.ndim:
            raise ValueError(f"transpose: {name}={d!r} is out of range for a {t.ndim}-D tensor")
    dims = list(range(t.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return Permute.apply(t, dims=tuple(dims))


def flatten(input, start_dim=1) -> Tensor:
    """Merge the axes from ``start_dim`` on into one (torch.flatten with end_dim=-1)."""
    t = as_tensor("flatten", "input", input)
    axes = max(t.ndim, 1)  # a 0-d tensor flattens to 1-D, like torch
    if not _is_int(start_dim):
        raise TypeError(f"flatten: start_dim must be an int, got {type(start_dim).__name__} "
                        f"{start_dim!r}")
    if not -axes <= start_dim < axes:
        raise ValueError(f"flatten: start_dim={start_dim!r} is out of range for {t.ndim}-D input")
    return reshape(t, t.shape[:start_dim] + (-1,))


def getitem(input, index) -> Tensor:
    """``input[index]``; Tensor indices are taken as integer arrays."""
    t = as_tensor("getitem", "input", input)
    index = _normalize_index(index)
    try:
        np.empty(t.shape, dtype=np.bool_)[index]  # bounds and form, without touching data
    except IndexError as err:
        raise ValueError(f"getitem: index {index!r} does not fit shape {t.shape}: {err}") from None
    return GetItem.apply(t, index=index)


def _normalize_index(index):
    """The index with every array in it the op's own read-only copy: backward scatters
    through the same index, and a caller reusing its index array after forward must not
    move the gradient."""
    if isinstance(index, tuple):
        return tuple(_normalize_index(i) for i in index)
    if isinstance(index, Tensor):
        data = index.to("cpu").numpy()
        if not np.all(data == np.round(data)):
            raise TypeError("getitem: a Tensor index must hold whole numbers")
        index = data.astype(np.int64)
    if isinstance(index, (list, np.ndarray)):
        index = np.array(index, copy=True)
        index.flags.writeable = False
    return index


def cat(tensors, dim=0) -> Tensor:
    """``torch.cat``: join ``tensors`` (a non-empty sequence of one dtype and device, of one
    shape except along ``dim``) along the existing axis ``dim``.

    >>> cat([Tensor([[1, 2]]), Tensor([[3, 4], [5, 6]])]).shape
    (3, 2)
    """
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat: tensors must be a list or tuple of Tensors, got "
                        f"{type(tensors).__name__}")
    if not tensors:
        raise ValueError("cat: tensors must hold at least one tensor, got an empty sequence")
    parts = [as_tensor("cat", f"tensors[{i}]", t) for i, t in enumerate(tensors)]
    first = parts[0]
    if not _is_int(dim):
        raise TypeError(f"cat: dim must be an int, got {type(dim).__name__} {dim!r}")
    if first.ndim == 0 or not -first.ndim <= dim < first.ndim:
        raise ValueError(f"cat: dim={dim!r} is out of range for tensors[0] of shape {first.shape}")
    dim = int(dim) % first.ndim
    for i, t in enumerate(parts[1:], start=1):
        if t.dtype != first.dtype:
            raise TypeError(f"cat: tensors[{i}] has dtype {t.dtype}, expected tensors[0]'s "
                            f"{first.dtype}")
        if t.device != first.device:
            raise ValueError(f"cat: tensors[{i}] is on {t.device}, expected tensors[0]'s "
                             f"device {first.device}")
        if t.ndim != first.ndim or t.shape[:dim] + t.shape[dim + 1:] != \
                first.shape[:dim] + first.shape[dim + 1:]:
            raise ValueError(f"cat: tensors[{i}] has shape {t.shape}, expected tensors[0]'s "
                             f"shape {first.shape} except along dim {dim}")
    return Cat.apply(*parts, dim=dim)
