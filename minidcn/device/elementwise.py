"""Elementwise kernels: one generic kernel per arity, the operation chosen by an integer code.

``unary(op, x, out)`` computes ``out = f(x)``, ``binary(op, x, y, out)`` computes
``out = x ∘ y`` and ``where(c, x, y, out)`` computes ``out = x if c else y``, element by
element.  Every operand and the output are strided views
(:mod:`minidcn.device.strided`) of one shape, so

* broadcasting is an operand view with stride 0 on the stretched axes (nothing copied);
* an in-place update (``a += b``, ``np.add.at`` with a basic index) is an output view
  that is also the first operand: each thread reads and writes only its own element.

Which operation runs is the integer ``op``, tested inside the kernel: the same compiled
kernel serves every operation of its arity, for each combination of dtypes.  Python's
``array.py`` resolves the dtypes first as NumPy would (``ufunc.resolve_dtypes``) and casts
the operands, so both inputs of ``binary`` have one dtype; the store into ``out`` converts
to the output's dtype (bool for comparisons).  Each branch stores its own result, so an
integer sum never passes through a float.

``math`` raises where NumPy returns a value (``log 0``, ``exp 1000``, ``sqrt -1``), so
the unary ops guard the edges of their domains and return NumPy's answer there
(-inf, inf, nan).  Division by zero needs no guard: kernels use NumPy's error model
(inf or nan, no exception).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .launch import grid_for
from .strided import StridedView, kernel_shape, position

# unary op codes (float inputs only)
NEGATIVE, ABSOLUTE, EXP, LOG, TANH, SQRT = range(6)

# binary op codes
(ADD, SUBTRACT, MULTIPLY, DIVIDE, POWER, MAXIMUM, MINIMUM,
 EQUAL, NOT_EQUAL, LESS, LESS_EQUAL, GREATER, GREATER_EQUAL) = range(13)

EXP_OVERFLOW = math.log(np.finfo(np.float64).max)  # exp(x) is inf in float64 beyond this


@cuda.jit(device=True)
def store_unary(op, x, out, p):
    """out[p] = f(x) for the unary op ``op``."""
    if op == NEGATIVE:
        out[p] = -x
    elif op == ABSOLUTE:
        out[p] = abs(x)
    elif op == EXP:
        out[p] = math.inf if x > EXP_OVERFLOW else math.exp(x)
    elif op == LOG:  # log 0 = -inf; log of a negative number is nan
        out[p] = math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)
    elif op == TANH:
        out[p] = math.tanh(x)
    elif op == SQRT:
        out[p] = math.sqrt(x) if x >= 0 else math.nan


@cuda.jit(device=True)
def store_binary(op, x, y, out, p):
    """out[p] = x ∘ y for the binary op ``op``; maximum and minimum propagate nan, as in NumPy."""
    if op == ADD:
        out[p] = x + y
    elif op == SUBTRACT:
        out[p] = x - y
    elif op == MULTIPLY:
        out[p] = x * y
    elif op == DIVIDE:
        out[p] = x / y
    elif op == POWER:
        out[p] = x ** y
    elif op == MAXIMUM:
        out[p] = x if (x > y or x != x) else y
    elif op == MINIMUM:
        out[p] = x if (x < y or x != x) else y
    elif op == EQUAL:
        out[p] = x == y
    elif op == NOT_EQUAL:
        out[p] = x != y
    elif op == LESS:
        out[p] = x < y
    elif op == LESS_EQUAL:
        out[p] = x <= y
    elif op == GREATER:
        out[p] = x > y
    elif op == GREATER_EQUAL:
        out[p] = x >= y


@cuda.jit
def unary_kernel(op, x, x_offset, x_strides, out, out_offset, out_strides, shape, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        store_unary(op, x[position(i, shape, x_strides, x_offset)],
                    out, position(i, shape, out_strides, out_offset))


@cuda.jit
def binary_kernel(op, x, x_offset, x_strides, y, y_offset, y_strides,
                  out, out_offset, out_strides, shape, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        store_binary(op, x[position(i, shape, x_strides, x_offset)],
                     y[position(i, shape, y_strides, y_offset)],
                     out, position(i, shape, out_strides, out_offset))


@cuda.jit
def where_kernel(cond, c_offset, c_strides, x, x_offset, x_strides, y, y_offset, y_strides,
                 out, out_offset, out_strides, shape, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        p = position(i, shape, out_strides, out_offset)
        if cond[position(i, shape, c_strides, c_offset)]:
            out[p] = x[position(i, shape, x_strides, x_offset)]
        else:
            out[p] = y[position(i, shape, y_strides, y_offset)]


def unary(op: int, x: StridedView, out: StridedView) -> None:
    """out = f(x) elementwise (``x`` already has ``out``'s shape)."""
    n = out.size
    if n:
        unary_kernel[grid_for(n)](op, *x.kernel_args(), *out.kernel_args(),
                                  kernel_shape(out.shape), n)


def binary(op: int, x: StridedView, y: StridedView, out: StridedView) -> None:
    """out = x ∘ y elementwise (``x`` and ``y`` already broadcast to ``out``'s shape)."""
    n = out.size
    if n:
        binary_kernel[grid_for(n)](op, *x.kernel_args(), *y.kernel_args(), *out.kernel_args(),
                                   kernel_shape(out.shape), n)


def where(cond: StridedView, x: StridedView, y: StridedView, out: StridedView) -> None:
    """out = x where cond else y (all already broadcast to ``out``'s shape)."""
    n = out.size
    if n:
        where_kernel[grid_for(n)](*cond.kernel_args(), *x.kernel_args(), *y.kernel_args(),
                                  *out.kernel_args(), kernel_shape(out.shape), n)
