"""2-D convolution as im2col + BLAS matrix products (numba backend).

The same formula as ``backends/reference/conv.py`` (read its docstring first), with one
change of layout: the images of a chunk sit side by side in the columns,

    cols[c, u, v, b, i, j] = x[b, c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w]   (0 outside),

so that with K = C_g·kh·kw rows and N = n·H_out·W_out columns (n images), each group needs
ONE matrix product per pass instead of one per image:

    y[:, g]   (O_g × N) = w[g] (O_g × K) @ cols[g] (K × N)
    grad_w[g] (O_g × K) = grad_y[:, g] (O_g × N) @ cols[g]ᵀ
    grad_cols[g] (K × N) = w[g]ᵀ @ grad_y[:, g]

(y and grad_y are moved between the (n, C_out, ...) and (C_out, n, ...) orders by a copy).
Few large BLAS calls matter on a small machine: each call splits its work across the
BLAS threads and waits for all of them, and with one call per image those waits add up,
badly so when other programs share the cores.

* im2col and col2im are ``@njit`` loops, parallel over the (image, channel) planes: a
  thread fills the columns of its own plane, and in col2im it adds into its own plane of
  grad_x, so no two threads write the same element and every sum is made in the same order
  whatever the thread count (the result is bitwise reproducible).
* the matrix products go to BLAS through ``np.matmul``.
* images are processed in chunks so that the column buffer (C_in·kh·kw·H_out·W_out
  elements per image) stays below ``COLUMN_BUFFER_BYTES`` however large the batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..reference.conv import output_size

__all__ = ["conv2d_forward", "conv2d_backward"]

COLUMN_BUFFER_BYTES = 32 << 20  # the column buffer of one chunk of images stays below 32 MiB


@njit(cache=True, parallel=True)
def im2col(x, stride, padding, dilation, cols):
    """cols[c, u, v, b, i, j] = x[b, c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w], 0 outside."""
    batch, channels, height, width = x.shape
    kh, kw, out_h, out_w = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        for u in range(kh):
            for v in range(kw):
                for i in range(out_h):
                    row = i * stride[0] - padding[0] + u * dilation[0]
                    for j in range(out_w):
                        col = j * stride[1] - padding[1] + v * dilation[1]
                        inside = 0 <= row < height and 0 <= col < width
                        cols[c, u, v, b, i, j] = x[b, c, row, col] if inside else 0
    return cols


@njit(cache=True, parallel=True)
def col2im(grad_cols, stride, padding, dilation, grad_x):
    """grad_x[b, c, row, col] = Σ grad_cols[c, u, v, b, i, j] over the (u, v, i, j) that read it."""
    batch, channels, height, width = grad_x.shape
    kh, kw, out_h, out_w = grad_cols.shape[1], grad_cols.shape[2], grad_cols.shape[4], grad_cols.shape[5]
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        grad_x[b, c] = 0
        for u in range(kh):
            for v in range(kw):
                for i in range(out_h):
                    row = i * stride[0] - padding[0] + u * dilation[0]
                    if row < 0 or row >= height:
                        continue
                    for j in range(out_w):
                        col = j * stride[1] - padding[1] + v * dilation[1]
                        if 0 <= col < width:
                            grad_x[b, c, row, col] += grad_cols[c, u, v, b, i, j]
    return grad_x


def _image_chunks(x, weight, out_size):
    """Yield (start, stop, cols) covering the batch, cols (C_in, kh, kw, n, H_out, W_out) bounded in size."""
    batch, channels = x.shape[:2]
    per_image = channels * weight.shape[2] * weight.shape[3] * out_size[0] * out_size[1]
    step = max(1, min(batch, COLUMN_BUFFER_BYTES // (x.itemsize * max(per_image, 1))))
    buffer = np.empty(step * per_image, dtype=x.dtype)
    for start in range(0, batch, step):
        stop = min(batch, start + step)
        shape = (channels,) + weight.shape[2:] + (stop - start,) + out_size
        yield start, stop, buffer[: (stop - start) * per_image].reshape(shape)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y (B, C_out, H_out, W_out) = conv2d(x, weight) + bias."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    batch, c_out = x.shape[0], weight.shape[0]
    out_size = output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    w = weight.reshape(groups, c_out // groups, -1)  # (G, O_g, K)
    y = np.empty((batch, c_out) + out_size, dtype=x.dtype)
    for start, stop, cols in _image_chunks(x, weight, out_size):
        im2col(x[start:stop], stride, padding, dilation, cols)
        n = stop - start
        y_cols = np.matmul(w, cols.reshape(groups, w.shape[2], -1))  # (G, O_g, N)
        y[start:stop] = y_cols.reshape((c_out, n) + out_size).transpose(1, 0, 2, 3)
    if bias is not None:
        y += bias.reshape(1, c_out, 1, 1)
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups):
    """(grad_x, grad_weight, grad_bias) of conv2d_forward."""
    grad_y, x, weight = (np.ascontiguousarray(a) for a in (grad_y, x, weight))
    c_out = weight.shape[0]
    w_t = np.ascontiguousarray(weight.reshape(groups, c_out // groups, -1).transpose(0, 2, 1))
    grad_x = np.empty_like(x)
    grad_weight = np.zeros((groups, c_out // groups, w_t.shape[1]), dtype=x.dtype)  # (G, O_g, K)
    for start, stop, cols in _image_chunks(x, weight, grad_y.shape[2:]):
        im2col(x[start:stop], stride, padding, dilation, cols)
        cols_g = cols.reshape(groups, w_t.shape[1], -1)                            # (G, K, N)
        gy = np.ascontiguousarray(grad_y[start:stop].transpose(1, 0, 2, 3))
        gy = gy.reshape(groups, c_out // groups, -1)                                # (G, O_g, N)
        grad_weight += np.matmul(gy, cols_g.transpose(0, 2, 1))
        grad_cols = np.matmul(w_t, gy).reshape(cols.shape)                          # (C_in, kh, kw, n, H_out, W_out)
        col2im(grad_cols, stride, padding, dilation, grad_x[start:stop])
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    return grad_x, grad_weight.reshape(weight.shape), grad_bias
