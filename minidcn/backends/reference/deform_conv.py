"""Deformable convolution v1 / v2, written as the formula (reference backend).

A plain convolution reads its input on a fixed grid around each output pixel.  The
deformable convolution moves every grid point by a learned offset Δp_k, reads the input
there by bilinear sampling (``bilinear.py``), and, in v2, scales the value by a learned
mask Δm_k:

    y(p0) = Σ_k w_k · x(p0 + p_k + Δp_k) · Δm_k  + b,

* p0 = (oy s_h - p_h, ox s_w - p_w): the top-left corner of the window of output (oy, ox);
* p_k = (i d_h, j d_w): kernel point k = i kw + j (row-major) on the dilated grid;
* Δp_k = (dy, dx) from ``offset``, Δm_k from ``mask`` (Δm_k = 1 without a mask: DCNv1).

So output (oy, ox) and kernel point (i, j) sample at
y = oy s_h - p_h + i d_h + dy,  x = ox s_w - p_w + j d_w + dx.

Layouts (torchvision's):

* x (B, C_in, H, W); weight (C_out, C_in / groups, kh, kw); bias (C_out,) or None;
* offset (B, 2 G_off kh kw, H_out, W_out): channel g·2·kh·kw + 2k holds dy and the next dx,
  for offset group g and kernel point k;
* mask (B, G_off kh kw, H_out, W_out) or None: channel g·kh·kw + k;
* input channel c moves with offset group c // (C_in / G_off); weight groups split the
  channels as in a grouped convolution.

Here the sum over k is a Python loop; each step samples the whole batch, every channel
and every output pixel at once, then applies the weights w_k as one matrix product per
weight group.  ``numba_cpu/deform_conv.py`` computes the same numbers as im2col + GEMM.
"""

from __future__ import annotations

import numpy as np

from .bilinear import bilinear_sample_forward, position_gradient, scatter_to_neighbours

__all__ = ["deform_conv2d_forward", "deform_conv2d_backward"]


def sampling_locations(offset, kernel_size, stride, padding, dilation):
    """Absolute sampling positions p0 + p_k + Δp_k, shape (B, G_off, kh·kw, H_out, W_out, 2).

    The last axis holds (y, x) in input pixel coordinates, in the dtype of ``offset``.
    """
    (kh, kw), (s_h, s_w), (p_h, p_w), (d_h, d_w) = kernel_size, stride, padding, dilation
    batch, channels, out_h, out_w = offset.shape
    delta = offset.reshape(batch, channels // (2 * kh * kw), kh * kw, 2, out_h, out_w)
    i, j = np.divmod(np.arange(kh * kw), kw)  # kernel point k = i kw + j
    grid_y = np.arange(out_h)[None, :, None] * s_h - p_h + i[:, None, None] * d_h  # (K, H_out, 1)
    grid_x = np.arange(out_w)[None, None, :] * s_w - p_w + j[:, None, None] * d_w  # (K, 1, W_out)
    y = grid_y.astype(offset.dtype) + delta[:, :, :, 0]
    x = grid_x.astype(offset.dtype) + delta[:, :, :, 1]
    return np.stack([y, x], axis=-1)


def _split_by_offset_group(x, offset, kernel_size, stride, padding, dilation, offset_groups):
    """The input as planes per offset group and the positions each kernel point samples.

    Returns planes (B·G_off, C_in / G_off, H, W) and points (kh·kw, B·G_off, H_out·W_out, 2):
    kernel point k reads ``bilinear_sample_forward(planes, points[k])``, whose result
    (B·G_off, C_in / G_off, H_out·W_out) is laid out like (B, C_in, H_out·W_out).
    """
    locations = sampling_locations(offset, kernel_size, stride, padding, dilation)
    batch, groups, kernel_points = locations.shape[:3]
    points = np.moveaxis(locations, 2, 0).reshape(kernel_points, batch * groups, -1, 2)
    planes = x.reshape(batch * offset_groups, -1, *x.shape[2:])
    return planes, points


def _mask_at(mask, k, offset_groups, kernel_points):
    """Δm_k of every image, offset group and output pixel, shaped (B·G_off, 1, H_out·W_out)."""
    batch = mask.shape[0]
    mask_k = mask.reshape(batch, offset_groups, kernel_points, -1)[:, :, k]
    return mask_k.reshape(batch * offset_groups, 1, -1)


def _weight_groups(weight_k, groups):
    """w_k (C_out, C_in / groups) -> (groups, C_out / groups, C_in / groups)."""
    return weight_k.reshape(groups, weight_k.shape[0] // groups, weight_k.shape[1])


def _by_group(a, batch, groups, pixels):
    """Channels split into ``groups`` consecutive groups: (B, groups, channels / groups, pixels)."""
    return a.reshape(batch, groups, -1, pixels)


def _contiguous(*arrays):
    return [None if a is None else np.ascontiguousarray(a) for a in arrays]


def deform_conv2d_forward(x, offset, mask, weight, bias, stride, padding, dilation, groups,
                          offset_groups):
    """y[b, o, p0] = Σ_k Σ_c w[o, c, k] · x[b, c](p0 + p_k + Δp_k) · Δm_k + bias[o]."""
    x, offset, mask, weight, bias = _contiguous(x, offset, mask, weight, bias)
    batch, (out_channels, _, kh, kw), (out_h, out_w) = x.shape[0], weight.shape, offset.shape[2:]
    planes, points = _split_by_offset_group(x, offset, (kh, kw), stride, padding, dilation,
                                            offset_groups)
    out = np.zeros((batch, groups, out_channels // groups, out_h * out_w), dtype=x.dtype)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        values = bilinear_sample_forward(planes, points[k])  # x(p0 + p_k + Δp_k)
        if mask is not None:
            values = values * _mask_at(mask, k, offset_groups, kh * kw)  # · Δm_k
        w_k = _weight_groups(weight[:, :, i, j], groups)
        out += w_k @ _by_group(values, batch, groups, out_h * out_w)  # w_k ·, summed over c
    out = out.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out += bias[:, None, None]
    return out


def deform_conv2d_backward(grad_y, x, offset, mask, weight, stride, padding, dilation, groups,
                           offset_groups):
    """Gradients of L = Σ grad_y · y for x, offset, mask, weight and bias.

    Write p = p0 + p_k + Δp_k for the point that output pixel p0 and kernel point k read,
    v_c = x[b, c](p) its value in channel c and m = Δm_k[b, g, p0] its mask (1 for DCNv1).
    Each v_c reaches the output through the weights, so first collect what flows back to it:

        u_c = Σ_o w[o, c, k] · grad_y[b, o, p0]          (o over c's weight group)

    Then, with c running over the channels of offset group g:

        grad_w[o, c, k]          = Σ_{b, p0} grad_y[b, o, p0] · m · v_c
        grad_Δm_k[b, g, p0]      = Σ_c u_c · v_c
        grad_Δp_k[b, g, p0]      = m · Σ_c u_c · dv_c/dp   (dp/dΔp_k = 1; dv_c/dp from the four
                                   corners, ``bilinear.position_gradient``), one sum per (dy, dx)
        grad_x[b, c](q)         += Σ_p0 G(q, p) · m · u_c   (the transpose of the sampling)
        grad_bias[o]             = Σ_{b, p0} grad_y[b, o, p0]

    Indices in the code: b image, g offset group, c channel within it (planes are
    (B·G_off, C_in / G_off, ...), so "bg" is one axis), o output channel, p output pixel.
    """
    grad_y, x, offset, mask, weight = _contiguous(grad_y, x, offset, mask, weight)
    batch, (out_channels, _, kh, kw), (out_h, out_w) = x.shape[0], weight.shape, offset.shape[2:]
    pixels = out_h * out_w
    planes, points = _split_by_offset_group(x, offset, (kh, kw), stride, padding, dilation,
                                            offset_groups)
    grad_by_group = _by_group(grad_y, batch, groups, pixels)  # (B, groups, C_out/groups, P)

    grad_x = np.zeros_like(planes)
    # Laid out as the layouts say: offset (B, G_off, K, [dy, dx], P), mask (B, G_off, K, P).
    grad_offset = np.zeros((batch * offset_groups, kh * kw, 2, pixels), dtype=x.dtype)
    grad_mask = None if mask is None else np.zeros((batch * offset_groups, kh * kw, pixels),
                                                   dtype=x.dtype)
    grad_weight = np.zeros_like(weight)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        v = bilinear_sample_forward(planes, points[k])  # v_c: (B·G_off, C_in/G_off, P)
        dv = position_gradient(planes, points[k])  # dv_c/dp: ([y, x], B·G_off, C_in/G_off, P)
        m = 1 if mask is None else _mask_at(mask, k, offset_groups, kh * kw)  # (B·G_off, 1, P)
        w_k = _weight_groups(weight[:, :, i, j], groups)  # (groups, C_out/groups, C_in/groups)

        # u_c = Σ_o w[o, c, k] grad_y[b, o, p], a matrix product over o per weight group
        u = (w_k.swapaxes(-1, -2) @ grad_by_group).reshape(v.shape)
        # grad_w[o, c, k] = Σ_{b, p} grad_y[b, o, p] · m v_c: a matrix product over p, summed on b
        mv = _by_group(v * m, batch, groups, pixels)
        grad_weight[:, :, i, j] = (grad_by_group @ mv.swapaxes(-1, -2)).sum(axis=0).reshape(
            out_channels, -1)
        # grad_Δm_k = Σ_c u_c v_c
        if mask is not None:
            grad_mask[:, k] = np.einsum("bcp,bcp->bp", u, v)
        # grad_Δp_k = m · Σ_c u_c dv_c/dp, for dy and dx
        grad_offset[:, k] = np.einsum("bcp,dbcp->bdp", u, dv) * m
        # grad_x(q) += Σ_p G(q, p) m u_c
        grad_x += scatter_to_neighbours(u * m, planes.shape, points[k])

    if grad_mask is not None:
        grad_mask = grad_mask.reshape(mask.shape)
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    grad_x, grad_offset = grad_x.reshape(x.shape), grad_offset.reshape(offset.shape)
    return grad_x, grad_offset, grad_mask, grad_weight, grad_bias
