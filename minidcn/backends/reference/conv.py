"""2-D convolution as im2col + matrix product (reference backend).

The formula (cross-correlation, as in torch.nn.functional.conv2d).  With C_g = C_in / G
input channels and O_g = C_out / G output channels per group, output channel o belongs to
group g = o // O_g and

    y[b, o, i, j] = bias[o] + Σ_{c < C_g} Σ_{u < kh} Σ_{v < kw}
                    w[o, c, u, v] · x[b, g·C_g + c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w],

where x reads as 0 outside the image (zero padding).

im2col turns the sum into a matrix product.  For each kernel point (u, v), the input pixels
that point touches, for every output pixel (i, j) at once, form a strided slice of the
zero-padded input:

    cols[b, c, u, v, i, j] = x_pad[b, c, u·d_h + i·s_h, v·d_w + j·s_w].

Grouping the axes (c, u, v) into K = C_g·kh·kw rows and (i, j) into L = H_out·W_out columns,
each group's output is one product:

    y[b, g] (O_g × L) = w[g] (O_g × K) @ cols[b, g] (K × L).

Backward, with grad_y[b, g] (O_g × L) the gradient of the output:

    grad_w[g]    = Σ_b grad_y[b, g] @ cols[b, g]ᵀ        (O_g × K)
    grad_cols    = w[g]ᵀ @ grad_y[b, g]                   (K × L)
    grad_bias[o] = Σ_{b, i, j} grad_y[b, o, i, j]

and col2im adds grad_cols back onto the padded input through the same slices (a pixel
touched by several kernel points collects all of their gradients), then crops the padding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv2d_forward", "conv2d_backward"]


def output_size(size, kernel, stride, padding, dilation):
    """H_out = (H + 2p - (d (k - 1) + 1)) // s + 1 for each of the two axes."""
    return tuple(
        (n + 2 * p - (d * (k - 1) + 1)) // s + 1
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation)
    )


def kernel_point_slices(kernel, stride, dilation, out_size):
    """For each kernel point (u, v), the slices of the padded input it reads.

    Output pixel (i, j) reads padded pixel (u·d_h + i·s_h, v·d_w + j·s_w), so over all i the
    rows are u·d_h, u·d_h + s_h, ..., u·d_h + (H_out - 1)·s_h: one strided slice.
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_size
    for u in range(kh):
        for v in range(kw):
            rows = slice(u * dh, u * dh + (ho - 1) * sh + 1, sh)
            cols = slice(v * dw, v * dw + (wo - 1) * sw + 1, sw)
            yield u, v, rows, cols


def im2col(x, kernel, stride, padding, dilation, out_size=None):
    """cols (B, C, kh, kw, H_out, W_out) with cols[b, c, u, v, i, j] = x_pad[b, c, u·d_h + i·s_h, v·d_w + j·s_w].

    ``out_size`` defaults to the convolution's (H_out, W_out); pooling passes its own when
    it drops the kernel points that read only padding.
    """
    (ph, pw), (kh, kw) = padding, kernel
    if out_size is None:
        out_size = output_size(x.shape[2:], kernel, stride, padding, dilation)
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty(x.shape[:2] + (kh, kw) + out_size, dtype=x.dtype)
    for u, v, rows, columns in kernel_point_slices(kernel, stride, dilation, out_size):
        cols[:, :, u, v] = x_pad[:, :, rows, columns]
    return cols


def col2im(cols, input_shape, stride, padding, dilation):
    """The adjoint of im2col: add each cols[:, :, u, v] back onto the pixels it was read from."""
    (ph, pw), (height, width) = padding, input_shape[2:]
    kernel, out_size = cols.shape[2:4], cols.shape[4:]
    grad_pad = np.zeros(input_shape[:2] + (height + 2 * ph, width + 2 * pw), dtype=cols.dtype)
    for u, v, rows, columns in kernel_point_slices(kernel, stride, dilation, out_size):
        grad_pad[:, :, rows, columns] += cols[:, :, u, v]
    return grad_pad[:, :, ph:ph + height, pw:pw + width]


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y (B, C_out, H_out, W_out) = conv2d(x, weight) + bias; see the module docstring."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    batch, c_out, kernel = x.shape[0], weight.shape[0], weight.shape[2:]
    cols = im2col(x, kernel, stride, padding, dilation)
    out_size = cols.shape[4:]
    # (G, O_g, K) @ (B, G, K, L) -> (B, G, O_g, L): one product per image and group.
    # Every size is spelled out (no -1): an empty batch leaves nothing to infer it from.
    rows = x.shape[1] // groups * kernel[0] * kernel[1]
    cols = cols.reshape(batch, groups, rows, out_size[0] * out_size[1])
    w = weight.reshape(groups, c_out // groups, rows)
    y = np.matmul(w, cols).reshape((batch, c_out) + out_size)
    if bias is not None:
        y += bias.reshape(1, c_out, 1, 1)
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, need_grad_input=True):
    """(grad_x, grad_weight, grad_bias) of conv2d_forward; see the module docstring.

    grad_x is None when ``need_grad_input`` is false (nothing upstream wants it).
    """
    grad_y, x, weight = (np.ascontiguousarray(a) for a in (grad_y, x, weight))
    batch = x.shape[0]
    c_out, kernel = weight.shape[0], weight.shape[2:]
    cols = im2col(x, kernel, stride, padding, dilation)
    cols_shape = cols.shape
    rows, positions = x.shape[1] // groups * kernel[0] * kernel[1], grad_y.shape[2] * grad_y.shape[3]
    cols = cols.reshape(batch, groups, rows, positions)                  # (B, G, K, L)
    gy = grad_y.reshape(batch, groups, c_out // groups, positions)       # (B, G, O_g, L)
    w = weight.reshape(groups, c_out // groups, rows)                    # (G, O_g, K)

    grad_weight = np.matmul(gy, cols.transpose(0, 1, 3, 2)).sum(axis=0).reshape(weight.shape)
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    if not need_grad_input:
        return None, grad_weight, grad_bias
    grad_cols = np.matmul(w.transpose(0, 2, 1), gy).reshape(cols_shape)
    grad_x = col2im(grad_cols, x.shape, stride, padding, dilation)
    return np.ascontiguousarray(grad_x), grad_weight, grad_bias
