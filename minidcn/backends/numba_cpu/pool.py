"""Max and average pooling as ``@njit`` loops (numba backend).

The formulas are those of ``backends/reference/pool.py`` (read its docstring first).  The
reference vectorises over windows and uses ``np.add.at`` for the max-pool scatter; here
each (image, channel) plane is one ``prange`` iteration that loops over its own windows.
A thread only ever writes its own plane, forward or backward, and adds in a fixed order,
so the results do not depend on the thread count.  Writing the loops out (rather than
re-exporting the NumPy code) keeps this backend an independent check of the reference
and makes the max-pool backward, a scatter, a plain loop instead of ``np.add.at``.  The
window itself (which kernel points lie inside the image, the max scan, the sum) is written
once in ``formulas/pool.py`` and compiled here with ``for_cpu``; the cuda backend compiles
the same source.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import for_cpu
from ..formulas import pool as formulas
from ..reference.conv import output_size

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]

points_inside = for_cpu(formulas.points_inside)
clipped_span = for_cpu(formulas.clipped_span)
window_max = for_cpu(formulas.window_max)
window_sum = for_cpu(formulas.window_sum)


@njit(cache=True, parallel=True)
def max_pool_planes(x, kernel_size, stride, padding, dilation, y, argmax):
    """y, argmax of every window: scan row-major, replace when value > best or value is NaN."""
    batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2:]
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        for i in range(out_h):
            row0 = i * stride[0] - padding[0]
            u0, u1 = points_inside(row0, dilation[0], kernel_size[0], height)
            for j in range(out_w):
                col0 = j * stride[1] - padding[1]
                v0, v1 = points_inside(col0, dilation[1], kernel_size[1], width)
                best, best_index = window_max(x, b, c, row0, u0, u1, dilation[0], col0, v0, v1, dilation[1])
                y[b, c, i, j] = best
                argmax[b, c, i, j] = best_index


@njit(cache=True, parallel=True)
def max_unpool_planes(grad_y, argmax, grad_x):
    """grad_x[b, c].flat[argmax[b, c, i, j]] += grad_y[b, c, i, j], one plane per thread."""
    batch, channels, height, width = grad_x.shape
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        grad_x[b, c] = 0
        for i in range(grad_y.shape[2]):
            for j in range(grad_y.shape[3]):
                index = argmax[b, c, i, j]
                grad_x[b, c, index // width, index % width] += grad_y[b, c, i, j]


@njit(cache=True, parallel=True)
def avg_pool_planes(x, kernel_size, stride, padding, count_include_pad, y):
    """y[b, c, i, j] = (sum of the window's pixels inside the image) / divisor."""
    batch, channels, height, width = x.shape
    kh, kw = kernel_size
    zero = x.dtype.type(0)
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        for i in range(y.shape[2]):
            row0, row1 = clipped_span(i * stride[0] - padding[0], kh, height)
            for j in range(y.shape[3]):
                col0, col1 = clipped_span(j * stride[1] - padding[1], kw, width)
                divisor = kh * kw if count_include_pad else (row1 - row0) * (col1 - col0)
                y[b, c, i, j] = window_sum(x, b, c, row0, row1, col0, col1, zero) / divisor


@njit(cache=True, parallel=True)
def avg_unpool_planes(grad_y, kernel_size, stride, padding, count_include_pad, grad_x):
    """Every pixel of window (i, j) inside the image receives grad_y[b, c, i, j] / divisor."""
    batch, channels, height, width = grad_x.shape
    kh, kw = kernel_size
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        grad_x[b, c] = 0
        for i in range(grad_y.shape[2]):
            row0, row1 = clipped_span(i * stride[0] - padding[0], kh, height)
            for j in range(grad_y.shape[3]):
                col0, col1 = clipped_span(j * stride[1] - padding[1], kw, width)
                divisor = kh * kw if count_include_pad else (row1 - row0) * (col1 - col0)
                share = grad_y[b, c, i, j] / divisor
                for row in range(row0, row1):
                    for col in range(col0, col1):
                        grad_x[b, c, row, col] += share


def max_pool2d_forward(x, kernel_size, stride, padding, dilation):
    """(y, argmax), each (B, C, H_out, W_out)."""
    x = np.ascontiguousarray(x)
    out = x.shape[:2] + output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    y, argmax = np.empty(out, dtype=x.dtype), np.empty(out, dtype=np.int64)
    max_pool_planes(x, kernel_size, stride, padding, dilation, y, argmax)
    return y, argmax


def max_pool2d_backward(grad_y, argmax, input_shape):
    """grad_x (input_shape): each output's gradient added at its argmax."""
    grad_x = np.empty(input_shape, dtype=grad_y.dtype)
    max_unpool_planes(np.ascontiguousarray(grad_y), np.ascontiguousarray(argmax), grad_x)
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """y (B, C, H_out, W_out)."""
    x = np.ascontiguousarray(x)
    out = x.shape[:2] + output_size(x.shape[2:], kernel_size, stride, padding, (1, 1))
    y = np.empty(out, dtype=x.dtype)
    avg_pool_planes(x, kernel_size, stride, padding, bool(count_include_pad), y)
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    """grad_x (input_shape)."""
    grad_x = np.empty(input_shape, dtype=grad_y.dtype)
    avg_unpool_planes(np.ascontiguousarray(grad_y), kernel_size, stride, padding,
                      bool(count_include_pad), grad_x)
    return grad_x
