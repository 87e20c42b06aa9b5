"""Batched matrix product with broadcast batch axes, one thread per output element.

For a of shape (*batch, m, k) and b of shape (*batch, k, n), both already broadcast to one
batch shape (a stretched batch axis has stride 0, so nothing is copied):

    out[β, i, j] = Σ_{l<k} a[β, i, l] · b[β, l, j]

Each thread owns one output element and sums over l in order, so the result is
deterministic.  The operands are strided views: a transposed operand (``aᵀ @ g`` in a
backward pass) is read in place through its strides.  This is the plain textbook loop:
no shared-memory tiling, which a fast GPU kernel would add.
"""

from __future__ import annotations

from numba import cuda

from .launch import grid_for
from .strided import StridedView, kernel_shape, position


@cuda.jit
def matmul_kernel(a, a_offset, a_batch_strides, a_row_stride, a_inner_stride,
                  b, b_offset, b_batch_strides, b_inner_stride, b_col_stride,
                  out, batch_shape, rows, cols, inner, total):
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        j = t % cols
        i = (t // cols) % rows
        batch = t // (rows * cols)
        pa = position(batch, batch_shape, a_batch_strides, a_offset) + i * a_row_stride
        pb = position(batch, batch_shape, b_batch_strides, b_offset) + j * b_col_stride
        out[t] = 0
        acc = out[t]  # zero in the output's dtype
        for l in range(inner):
            acc += a[pa + l * a_inner_stride] * b[pb + l * b_inner_stride]
        out[t] = acc


def matmul(a: StridedView, b: StridedView, out_flat) -> None:
    """``out_flat`` (C order, shape (*batch, m, n)) = a @ b.

    a is (*batch, m, k) and b (*batch, k, n), both broadcast to one batch shape.
    """
    total = out_flat.size
    if total == 0:
        return
    rows, inner = a.shape[-2:]
    cols = b.shape[-1]
    batch_shape = kernel_shape(a.shape[:-2])
    matmul_kernel[grid_for(total)](
        a.data, a.offset, a.strides[:-2] or (0,), a.strides[-2], a.strides[-1],
        b.data, b.offset, b.strides[:-2] or (0,), b.strides[-2], b.strides[-1],
        out_flat, batch_shape, rows, cols, inner, total,
    )
