"""Axis reduction: sum, max or min over any set of axes, one thread per output element.

The input view is split into the axes that are kept and the axes that are reduced:

    out[k] = ⊕_r  x[offset + Σ_kept k_d · stride_d + Σ_reduced r_e · stride_e]

where ⊕ is +, max or min (the integer ``op``).  Each thread owns one output element ``k``
and walks its reduced elements ``r`` in C order, so the result is deterministic (the same
order on every run and every grid), at the cost of a serial loop per output.  The
accumulator has the output's dtype: a float32 sum accumulates in float32 (NumPy's
pairwise summation differs from this sequential one by a few float32 roundings), a bool
or int sum in int64.  max and min propagate nan as NumPy does: once the accumulator is
nan, no comparison with it is true, so it stays nan.
"""

from __future__ import annotations

from numba import cuda

from .launch import grid_for
from .strided import StridedView, kernel_shape, position

SUM, MAX, MIN = range(3)


@cuda.jit
def reduce_kernel(op, x, x_offset, kept_shape, kept_strides, red_shape, red_strides, count,
                  out, n):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        base = position(k, kept_shape, kept_strides, x_offset)
        if count == 0:  # only a sum may reduce an empty axis: the empty sum is 0
            out[k] = 0
            continue
        out[k] = x[position(0, red_shape, red_strides, base)]
        acc = out[k]  # the accumulator takes the output's dtype
        for r in range(1, count):
            v = x[position(r, red_shape, red_strides, base)]
            if op == SUM:
                acc += v
            elif op == MAX:
                if v > acc or v != v:
                    acc = v
            elif op == MIN:
                if v < acc or v != v:
                    acc = v
        out[k] = acc


def reduce(op: int, x: StridedView, axes: tuple, out_flat) -> None:
    """``out_flat`` (C order over the kept axes) = ⊕ of ``x`` over ``axes``."""
    kept = [d for d in range(len(x.shape)) if d not in axes]
    n = out_flat.size
    if n == 0:
        return
    kept_shape = kernel_shape(x.shape[d] for d in kept)
    kept_strides = tuple(x.strides[d] for d in kept) or (0,)
    red_shape = kernel_shape(x.shape[d] for d in axes)
    red_strides = tuple(x.strides[d] for d in axes) or (0,)
    count = 1
    for d in axes:
        count *= x.shape[d]
    reduce_kernel[grid_for(n)](op, x.data, x.offset, kept_shape, kept_strides,
                               red_shape, red_strides, count, out_flat, n)
