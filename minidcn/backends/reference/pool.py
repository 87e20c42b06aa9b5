"""Max and average pooling over 2-D windows (reference backend).

Output pixel (i, j) of every channel looks at a window of the input,

    rows i·s_h - p_h + u·d_h  (u < kh),    columns j·s_w - p_w + v·d_w  (v < kw),

with padding p on every side (average pooling has no dilation: d = 1).

max_pool2d (torch's semantics):

    y[b, c, i, j] = max over the window's pixels inside the image (padding never wins),
    argmax[b, c, i, j] = row·W + col of that pixel (a flat index into the (H, W) plane).

  The window is scanned in row-major order and a pixel replaces the current best when
  ``value > best or isnan(value)``: the first maximum wins ties, and a NaN in the window
  propagates (the last NaN is the one recorded).  The gradient goes to the argmax only:

    grad_x[b, c].flat[argmax[b, c, i, j]] += grad_y[b, c, i, j]

  (overlapping windows may route several gradients to one pixel; they add up).

avg_pool2d:

    y[b, c, i, j] = Σ_{u, v} x_pad[b, c, i·s_h + u, j·s_w + v] / divisor[i, j]

  where x_pad is x padded with zeros and divisor is kh·kw (``count_include_pad=True``,
  torch's default) or the number of window pixels inside the image.  This is a convolution
  of each channel with a constant kernel, so it reuses im2col / col2im from ``conv.py``:
  the forward sums the columns, and the backward hands every window pixel
  grad_y[b, c, i, j] / divisor[i, j] through col2im.

Kernel points that read only padding, for every window, are skipped (``inside_points``):
they never win a max and add 0 to a sum, so the numbers do not change, and a window far
larger than the image (torch allows kernel_size up to 2**31 - 1 with half of it padding)
costs the image's size, not the window's.
"""

from __future__ import annotations

import numpy as np

from .conv import col2im, im2col, output_size

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]

NO_DILATION = (1, 1)


def inside_points(size, kernel, stride, padding, dilation, out):
    """[first, stop): the kernel points u whose position i·s - p + u·d is inside [0, size)
    for at least one window i < out.

    The last window (i = out - 1) is the first to reach 0, at u = ceil((p - (out-1)·s) / d);
    the first window (i = 0) is the last to stay below size, up to u < ceil((size + p) / d).
    """
    first = max(0, -(((out - 1) * stride - padding) // dilation))
    stop = min(kernel, -((-padding - size) // dilation))
    return first, stop


def window_positions(size, kernel, stride, padding, dilation, out):
    """positions[i, u'] = i·s - p + u·d along one axis for the kernel points u = first + u'
    of ``inside_points``, and whether each lies inside [0, size)."""
    first, stop = inside_points(size, kernel, stride, padding, dilation, out)
    positions = np.arange(out)[:, None] * stride - padding + np.arange(first, stop)[None, :] * dilation
    return positions, (positions >= 0) & (positions < size)


def max_pool2d_forward(x, kernel_size, stride, padding, dilation):
    """(y, argmax), each (B, C, H_out, W_out); see the module docstring."""
    x = np.ascontiguousarray(x)
    height, width = x.shape[2:]
    out_h, out_w = output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    rows, rows_inside = window_positions(height, kernel_size[0], stride[0], padding[0], dilation[0], out_h)
    cols, cols_inside = window_positions(width, kernel_size[1], stride[1], padding[1], dilation[1], out_w)
    y = np.full(x.shape[:2] + (out_h, out_w), -np.inf, dtype=x.dtype)
    argmax = np.full(y.shape, -1, dtype=np.int64)
    for u in range(rows.shape[1]):
        for v in range(cols.shape[1]):
            # Kernel point (u, v) of every window at once: pixel (rows[i, u], cols[j, v]).
            r, c = rows[:, u, None], cols[None, :, v]
            inside = rows_inside[:, u, None] & cols_inside[None, :, v]  # (H_out, W_out)
            value = x[:, :, np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)]
            first = argmax < 0  # no pixel of this window seen yet
            take = inside & (first | (value > y) | np.isnan(value))
            y = np.where(take, value, y)
            argmax = np.where(take, r * width + c, argmax)
    return y, argmax


def max_pool2d_backward(grad_y, argmax, input_shape):
    """grad_x with grad_x[b, c].flat[argmax[b, c, i, j]] += grad_y[b, c, i, j]."""
    batch, channels, height, width = input_shape
    planes = batch * channels
    grad_x = np.zeros((planes, height * width), dtype=grad_y.dtype)
    plane_index = np.arange(planes)[:, None]
    # np.add.at adds every duplicate index (a pixel that won several windows) in turn.
    windows = argmax.shape[2] * argmax.shape[3]  # spelled out: an empty batch has no -1 to infer
    np.add.at(grad_x, (plane_index, np.reshape(argmax, (planes, windows))),
              np.reshape(grad_y, (planes, windows)))
    return grad_x.reshape(input_shape)


def avg_divisor(input_size, kernel_size, stride, padding, count_include_pad, dtype):
    """divisor[i, j]: kh·kw, or the number of pixels of window (i, j) inside the image."""
    out = output_size(input_size, kernel_size, stride, padding, NO_DILATION)
    if count_include_pad:
        return np.full(out, kernel_size[0] * kernel_size[1], dtype=dtype)
    _, rows_inside = window_positions(input_size[0], kernel_size[0], stride[0], padding[0], 1, out[0])
    _, cols_inside = window_positions(input_size[1], kernel_size[1], stride[1], padding[1], 1, out[1])
    return np.outer(rows_inside.sum(axis=1), cols_inside.sum(axis=1)).astype(dtype)


def trimmed_window(input_size, kernel_size, stride, padding):
    """(kernel, padding, out) of the same average pooling without the kernel points of
    ``inside_points``' complement: kernel point u becomes u - first, the padding p - first."""
    out = output_size(input_size, kernel_size, stride, padding, NO_DILATION)
    kept = [inside_points(n, k, s, p, 1, o)
            for n, k, s, p, o in zip(input_size, kernel_size, stride, padding, out)]
    kernel = tuple(stop - first for first, stop in kept)
    return kernel, tuple(p - first for p, (first, _) in zip(padding, kept)), out


def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """y (B, C, H_out, W_out): the window sums of the zero-padded x over the divisor."""
    x = np.ascontiguousarray(x)
    kernel, pad, out = trimmed_window(x.shape[2:], kernel_size, stride, padding)
    cols = im2col(x, kernel, stride, pad, NO_DILATION, out)  # (B, C, kh', kw', H_out, W_out)
    divisor = avg_divisor(x.shape[2:], kernel_size, stride, padding, count_include_pad, x.dtype)
    return cols.sum(axis=(2, 3)) / divisor


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    """grad_x: every pixel of window (i, j) receives grad_y[b, c, i, j] / divisor[i, j]."""
    grad_y = np.ascontiguousarray(grad_y)
    divisor = avg_divisor(input_shape[2:], kernel_size, stride, padding, count_include_pad, grad_y.dtype)
    share = grad_y / divisor
    kernel, pad, _ = trimmed_window(input_shape[2:], kernel_size, stride, padding)
    grad_cols = np.broadcast_to(share[:, :, None, None], share.shape[:2] + kernel + share.shape[2:])
    return np.ascontiguousarray(col2im(grad_cols, input_shape, stride, pad, NO_DILATION))
