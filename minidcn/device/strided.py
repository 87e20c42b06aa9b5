"""Strided views: how one flat device buffer is read as an n-d array.

A view is ``(data, offset, shape, strides)``: ``data`` is a 1-D device array, and element
``(i_0, ..., i_{n-1})`` of the view lives at the flat position

    offset + Σ_d i_d · strides[d]          (strides counted in elements, not bytes).

A C-contiguous array of shape ``(n_0, ..., n_{k-1})`` has ``strides[d] = Π_{e>d} n_e``.
Every rearrangement NumPy makes without copying is a new ``(offset, shape, strides)`` on
the same data:

* transposing permutes shape and strides together;
* broadcasting gives a stretched or a new axis the stride 0, so all its indices read
  the same element;
* basic indexing: ``a[i]`` adds ``i · stride`` to the offset and drops the axis,
  ``a[start:stop:step]`` adds ``start · stride`` and multiplies the stride by ``step``,
  ``None`` inserts an axis of size 1.

The kernels receive views and find each element with :func:`position`, so a broadcast or
transposed operand costs no copy.  A :class:`~minidcn.device.array.CudaArray` always
owns C-contiguous memory: a view that becomes an array of its own is copied out
(materialised) by the copy kernel.

Kernels get shapes and strides as tuples (passed by value, no transfer).  A 0-d view is
walked as one element of a 1-D view (``kernel_shape``), since a kernel cannot index an
empty tuple.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from numba import cuda


@cuda.jit(device=True)
def position(i, shape, strides, offset):
    """Flat position of the i-th element, counted in C order, of the view (offset, shape, strides).

    The C-order index i is split into coordinates from the last axis to the first:
    i_d = i mod n_d, then i ← i div n_d.
    """
    pos = offset
    for d in range(len(shape) - 1, -1, -1):
        pos += (i % shape[d]) * strides[d]
        i //= shape[d]
    return pos


class StridedView(NamedTuple):
    """``data`` (flat device array) read with ``offset`` and per-axis ``strides`` as ``shape``."""

    data: object
    offset: int
    shape: tuple
    strides: tuple

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def kernel_args(self) -> tuple:
        """(data, offset, strides) as a kernel takes them (a 0-d view gets the stride 0)."""
        return self.data, self.offset, self.strides or (0,)


def kernel_shape(shape) -> tuple:
    """The shape a kernel walks: ``shape`` itself, or (1,) for a 0-d array."""
    return tuple(shape) or (1,)


def c_strides(shape) -> tuple:
    """Element strides of a C-contiguous array: strides[d] = Π_{e>d} shape[e]."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= int(n)
    return tuple(reversed(strides))


def contiguous(flat, shape) -> StridedView:
    """The C-ordered view of shape ``shape`` over the flat device array ``flat``."""
    shape = tuple(int(n) for n in shape)
    return StridedView(flat, 0, shape, c_strides(shape))


def broadcast(view: StridedView, shape) -> StridedView:
    """``view`` stretched to ``shape`` (already known to be compatible): new leading axes and
    stretched size-1 axes get stride 0."""
    shape = tuple(int(n) for n in shape)
    lead = len(shape) - len(view.shape)
    strides = (0,) * lead + tuple(
        0 if n == 1 else s for n, s in zip(view.shape, view.strides)
    )
    return StridedView(view.data, view.offset, shape, strides)


def permute(view: StridedView, axes) -> StridedView:
    """Axis ``k`` of the result is axis ``axes[k]`` of ``view`` (a permutation, already checked)."""
    return StridedView(
        view.data, view.offset,
        tuple(view.shape[a] for a in axes), tuple(view.strides[a] for a in axes),
    )


def is_basic_index(index) -> bool:
    """True when every part of ``index`` is an int, a slice, None or Ellipsis (no arrays, no
    lists, no booleans): then ``a[index]`` is a view, with no element picked twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(
        k is None or k is Ellipsis or isinstance(k, slice)
        or (isinstance(k, numbers.Integral) and not isinstance(k, (bool, np.bool_)))
        for k in parts
    )


def basic_index(view: StridedView, index) -> StridedView:
    """The view ``a[index]`` for a basic index whose bounds NumPy has already checked."""
    parts = index if isinstance(index, tuple) else (index,)
    named = sum(1 for k in parts if k is not None and k is not Ellipsis)
    fill = (slice(None),) * (len(view.shape) - named)
    at = next((j for j, k in enumerate(parts) if k is Ellipsis), len(parts))
    parts = parts[:at] + fill + parts[at + 1:]  # the Ellipsis (or the end) spans the rest

    offset, shape, strides, axis = view.offset, [], [], 0
    for k in parts:
        if k is None:
            shape.append(1)
            strides.append(0)
            continue
        n, s = view.shape[axis], view.strides[axis]
        axis += 1
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            shape.append(len(range(start, stop, step)))
            strides.append(s * step)
            offset += start * s
        else:
            offset += (int(k) % n) * s  # a negative index counts from the end
    return StridedView(view.data, offset, tuple(shape), tuple(strides))


def index_shape(shape, index) -> tuple:
    """The shape of ``a[index]`` for an array of ``shape``; IndexError as NumPy raises it.

    NumPy indexes a stand-in that has the shape but one byte of memory (every stride 0).
    """
    return np.broadcast_to(np.zeros((), np.int8), tuple(shape))[index].shape


def reshaped(shape, newshape) -> tuple:
    """``newshape`` with its -1 resolved, for an array of ``shape``; ValueError as NumPy raises it.

    NumPy reshapes a stand-in that has the size but one byte of memory (every stride 0).
    """
    size = int(np.prod(shape, dtype=np.int64))
    return np.broadcast_to(np.zeros((), np.int8), (size,)).reshape(newshape).shape


def flat_positions(shape, index) -> np.ndarray:
    """Flat C-order positions (int64, shaped like ``a[index]``) of the elements any NumPy
    index picks from an array of ``shape``.

    The position is Σ_d i_d · strides[d]: NumPy applies the index to each coordinate grid
    i_d · strides[d] (a broadcast view, no memory of the array's size), and the picked
    terms are summed.  Only the index is touched, never the array's data.
    """
    out = np.zeros(index_shape(shape, index), dtype=np.int64)
    grids = np.ix_(*(np.arange(n, dtype=np.int64) for n in shape))
    for grid, stride in zip(grids, c_strides(shape)):
        out += np.broadcast_to(grid * stride, tuple(shape))[index]
    return out
