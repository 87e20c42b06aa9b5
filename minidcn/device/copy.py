"""Kernels that move elements without computing: fill, strided copy, gather, scatter-add.

* ``fill``:  ``dst[view] = value``: zeros, constants, scalar operands, ``a[index] = value``.
* ``copy``:  ``dst[view] = src[view]``: materialising a transposed, broadcast or indexed view,
  casting (the store converts to the destination's dtype), ``a[index] = b``.
* ``gather``:  ``dst[i] = src[positions[i]]``: integer-array indexing.
* ``scatter_add``:  ``dst[positions[i]] += src[i]``: ``np.add.at`` with integer arrays.
  Several i may name one position, so the additions are atomic.  On a GPU the order of
  the atomic additions varies, so a repeated position's float sum can change in its last
  bits from run to run.

Views are described in :mod:`minidcn.device.strided`; each launcher takes views and
skips empty work.  Every kernel is a grid-stride loop over its n work items.
"""

from __future__ import annotations

from numba import cuda

from .launch import grid_for
from .strided import StridedView, kernel_shape, position


@cuda.jit
def fill_kernel(dst, dst_offset, dst_strides, shape, value, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[position(i, shape, dst_strides, dst_offset)] = value


@cuda.jit
def copy_kernel(src, src_offset, src_strides, dst, dst_offset, dst_strides, shape, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[position(i, shape, dst_strides, dst_offset)] = \
            src[position(i, shape, src_strides, src_offset)]


@cuda.jit
def gather_kernel(src, positions, dst, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[i] = src[positions[i]]


@cuda.jit
def scatter_add_kernel(dst, positions, src, src_offset, src_strides, shape, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        cuda.atomic.add(dst, positions[i], src[position(i, shape, src_strides, src_offset)])


def fill(dst: StridedView, value) -> None:
    """Every element of ``dst`` becomes ``value`` (converted to ``dst``'s dtype)."""
    n = dst.size
    if n:
        data, offset, strides = dst.kernel_args()
        value = data.dtype.type(value)
        fill_kernel[grid_for(n)](data, offset, strides, kernel_shape(dst.shape), value, n)


def copy(src: StridedView, dst: StridedView) -> None:
    """``dst = src`` element by element (same shape; the store casts to ``dst``'s dtype)."""
    n = dst.size
    if n:
        copy_kernel[grid_for(n)](*src.kernel_args(), *dst.kernel_args(),
                                 kernel_shape(dst.shape), n)


def gather(src_flat, positions_flat, dst_flat) -> None:
    """``dst_flat[i] = src_flat[positions_flat[i]]`` (all flat device arrays)."""
    n = dst_flat.size
    if n:
        gather_kernel[grid_for(n)](src_flat, positions_flat, dst_flat, n)


def scatter_add(dst_flat, positions_flat, src: StridedView) -> None:
    """``dst_flat[positions_flat[i]] += src[i]`` atomically; ``src`` is walked in C order."""
    n = src.size
    if n:
        scatter_add_kernel[grid_for(n)](dst_flat, positions_flat, *src.kernel_args(),
                                        kernel_shape(src.shape), n)
