"""Max and average pooling as numba.cuda kernels (cuda backend).

The formulas are those of ``backends/reference/pool.py`` (read its docstring first).  The
forward kernels run one thread per output element (one window).  The backward kernels:

* avg: one thread per input pixel, gathering as conv2d's grad_x does (``conv.py``): pixel
  (row, col) is kernel point (u, v) of window (i, j) exactly when row = i·s_h - p_h + u
  and col = j·s_w - p_w + v, and ``source_index`` finds that i (or j) when it exists; the
  pixel sums grad_y[b, c, i, j] / divisor[i, j] over its windows.  No atomics, a fixed
  order of addition.
* max: the backward receives only the argmax (not the window geometry), so it scatters:
  one thread per window adds grad_y[b, c, i, j] at its argmax with ``cuda.atomic.add``.
  Overlapping windows (stride < kernel) can add into one pixel in any order, so in that
  case the last bits of a sum may differ from run to run.

Accumulators start from ``zero``, a scalar of the arrays' dtype (see ``conv.py``).  The
window itself (which kernel points lie inside the image, the max scan, the sum) is written
once in ``formulas/pool.py`` and compiled here as device functions with ``for_gpu``; the
numba_cpu backend compiles the same source.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import for_gpu
from ..formulas import pool as formulas
from ..reference.conv import output_size
from .conv import source_index, unravel

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]

NO_DILATION = (1, 1)

points_inside = for_gpu(formulas.points_inside)
clipped_span = for_gpu(formulas.clipped_span)
window_max = for_gpu(formulas.window_max)
window_sum = for_gpu(formulas.window_sum)


@cuda.jit
def max_pool_kernel(x, kernel_size, stride, padding, dilation, y, argmax):
    """One thread per window: scan row-major, replace when value > best or value is NaN."""
    height, width = x.shape[2], x.shape[3]
    for index in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, c, i, j = unravel(index, y.shape)
        row0, col0 = i * stride[0] - padding[0], j * stride[1] - padding[1]
        u0, u1 = points_inside(row0, dilation[0], kernel_size[0], height)
        v0, v1 = points_inside(col0, dilation[1], kernel_size[1], width)
        best, best_index = window_max(x, b, c, row0, u0, u1, dilation[0], col0, v0, v1, dilation[1])
        y[b, c, i, j] = best
        argmax[b, c, i, j] = best_index


@cuda.jit
def max_unpool_kernel(grad_y, argmax, grad_x):
    """One thread per window: add its gradient at its argmax (grad_x starts at zero)."""
    width = grad_x.shape[3]
    for index in range(cuda.grid(1), grad_y.size, cuda.gridsize(1)):
        b, c, i, j = unravel(index, grad_y.shape)
        target = argmax[b, c, i, j]
        cuda.atomic.add(grad_x, (b, c, target // width, target % width), grad_y[b, c, i, j])


@cuda.jit(device=True)
def avg_divisor(i, j, kernel_size, stride, padding, height, width, count_include_pad):
    """kh·kw, or the number of pixels of window (i, j) inside the image."""
    if count_include_pad:
        return kernel_size[0] * kernel_size[1]
    row_lo, row_hi = clipped_span(i * stride[0] - padding[0], kernel_size[0], height)
    col_lo, col_hi = clipped_span(j * stride[1] - padding[1], kernel_size[1], width)
    return (row_hi - row_lo) * (col_hi - col_lo)


@cuda.jit
def avg_pool_kernel(x, kernel_size, stride, padding, count_include_pad, zero, y):
    """One thread per window: the sum of its pixels inside the image over the divisor."""
    height, width = x.shape[2], x.shape[3]
    for index in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, c, i, j = unravel(index, y.shape)
        row_lo, row_hi = clipped_span(i * stride[0] - padding[0], kernel_size[0], height)
        col_lo, col_hi = clipped_span(j * stride[1] - padding[1], kernel_size[1], width)
        total = window_sum(x, b, c, row_lo, row_hi, col_lo, col_hi, zero)
        y[b, c, i, j] = total / avg_divisor(i, j, kernel_size, stride, padding, height, width,
                                            count_include_pad)


@cuda.jit
def avg_unpool_kernel(grad_y, kernel_size, stride, padding, count_include_pad, zero, grad_x):
    """One thread per input pixel: Σ grad_y[b, c, i, j] / divisor[i, j] over its windows."""
    height, width = grad_x.shape[2], grad_x.shape[3]
    for index in range(cuda.grid(1), grad_x.size, cuda.gridsize(1)):
        b, c, row, col = unravel(index, grad_x.shape)
        acc = zero
        # Only kernel points u = row + p - i·s of some window i < H_out can hold the pixel:
        # fewer than H_out·s_h + 1 of them, however large the window.
        u0, u1 = clipped_span(row + padding[0] - (grad_y.shape[2] - 1) * stride[0],
                              (grad_y.shape[2] - 1) * stride[0] + 1, kernel_size[0])
        v0, v1 = clipped_span(col + padding[1] - (grad_y.shape[3] - 1) * stride[1],
                              (grad_y.shape[3] - 1) * stride[1] + 1, kernel_size[1])
        for u in range(u0, u1):
            i = source_index(row, u, stride[0], padding[0], 1, grad_y.shape[2])
            if i < 0:
                continue
            for v in range(v0, v1):
                j = source_index(col, v, stride[1], padding[1], 1, grad_y.shape[3])
                if j >= 0:
                    acc += grad_y[b, c, i, j] / avg_divisor(i, j, kernel_size, stride, padding,
                                                            height, width, count_include_pad)
        grad_x[b, c, row, col] = acc


def max_pool2d_forward(x, kernel_size, stride, padding, dilation):
    """(y, argmax) on the device, each (B, C, H_out, W_out)."""
    out = x.shape[:2] + output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    y, argmax = CudaArray.empty(out, x.dtype), CudaArray.empty(out, np.int64)
    blocks, threads = grid_for(y.size)
    max_pool_kernel[blocks, threads](x.dev, kernel_size, stride, padding, dilation, y.dev,
                                     argmax.dev)
    return y, argmax


def max_pool2d_backward(grad_y, argmax, input_shape):
    """grad_x (input_shape) on the device: each window's gradient added at its argmax."""
    grad_x = CudaArray.zeros(input_shape, grad_y.dtype)
    blocks, threads = grid_for(grad_y.size)
    max_unpool_kernel[blocks, threads](grad_y.dev, argmax.dev, grad_x.dev)
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """y (B, C, H_out, W_out) on the device."""
    out = x.shape[:2] + output_size(x.shape[2:], kernel_size, stride, padding, NO_DILATION)
    y = CudaArray.empty(out, x.dtype)
    blocks, threads = grid_for(y.size)
    avg_pool_kernel[blocks, threads](x.dev, kernel_size, stride, padding,
                                     bool(count_include_pad), x.dtype.type(0), y.dev)
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    """grad_x (input_shape) on the device."""
    grad_x = CudaArray.empty(input_shape, grad_y.dtype)
    blocks, threads = grid_for(grad_x.size)
    avg_unpool_kernel[blocks, threads](grad_y.dev, kernel_size, stride, padding,
                                       bool(count_include_pad), grad_y.dtype.type(0), grad_x.dev)
    return grad_x
