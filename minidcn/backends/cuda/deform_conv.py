"""Deformable convolution (DCN v1 / v2) with numba.cuda kernels (cuda backend).

The formula and the layouts are in ``backends/reference/deform_conv.py``:

    y[n, o, p0] = b[o] + Σ_c Σ_k w[o, c, k] · m[n, g(c), k, p0] · x[n, c](p0 + p_k + Δp[n, g(c), k, p0])

Forward, in two kernels:

1. ``_im2col_kernel``: one thread per sampling point (image n, offset group g, kernel point k,
   output pixel p).  It computes the corner and the bilinear weights once
   (``bilinear_weights`` from ``formulas/bilinear.py``, compiled in ``cuda/bilinear.py``)
   and writes the masked sample of every channel of the group into the column buffer
   cols[n, c·K + k, p]  (K = kh·kw);
2. ``_output_kernel``: the GEMM written as one thread per output value,
   y[n, o, p] = b[o] + Σ_{c in o's group, k} w[o, c, k] · cols[n, c·K + k, p].
   Neighbouring threads take neighbouring p, so the reads of cols are coalesced and the
   weight is the same for the whole warp.

Backward recomputes the columns, then:

* ``_grad_weight_kernel``: grad_w[o, c, k] = Σ_n Σ_p grad_y[n, o, p] · cols[n, c·K + k, p];
* ``_grad_cols_kernel``:   grad_cols[n, c·K + k, p] = Σ_{o in c's group} w[o, c, k] · grad_y[n, o, p];
* ``_col2im_kernel``: one thread per sampling point again.  It scatters m · w_i · grad_cols
  to the four corners of every channel with ``cuda.atomic.add`` (points share corners), and
  reduces, with S_i = Σ_c grad_cols · x_c(q_i), grad_offset = m · (Σ_i w_dy_i S_i,
  Σ_i w_dx_i S_i) and grad_mask = Σ_i w_i S_i, which that thread alone writes;
* ``_grad_bias_kernel``: grad_b[o] = Σ_n Σ_p grad_y[n, o, p].

The column buffer holds the whole batch (B · C_in · K · H_out · W_out values); unlike the
numba_cpu backend there is no chunking.  The atomic scatter makes the last bits of grad_x
depend on the order in which a real GPU runs the threads; everything else is deterministic.
"""

from __future__ import annotations

from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from .bilinear import add_corner_products, bilinear_weights, corner_sum, interpolate

__all__ = ["deform_conv2d_forward", "deform_conv2d_backward"]


@cuda.jit(device=True)
def _sampling_point(x, offset, mask, has_mask, t, geometry):
    """Sampling point number t: which one it is, where it lies, and its weights.

    t runs over (image n, offset group g, kernel point k, output pixel p = oy · W_out + ox),
    p fastest.  The point is (oy s_h - p_h + i d_h + dy, ox s_w - p_w + j d_w + dx) for
    k = i kw + j.  Returns (n, g, k, oy, ox, m, inside, y0, x0, w, w_dy, w_dx): the mask
    value m (1 without a mask) and what ``bilinear_weights`` says about the point.
    """
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    out_h, out_w = offset.shape[2], offset.shape[3]
    points = kh * kw
    offset_groups = offset.shape[1] // (2 * points)
    pixel, rest = t % (out_h * out_w), t // (out_h * out_w)
    k, rest = rest % points, rest // points
    g, n = rest % offset_groups, rest // offset_groups
    oy, ox = pixel // out_w, pixel % out_w
    at_y = oy * sh - ph + (k // kw) * dh + offset[n, g * 2 * points + 2 * k, oy, ox]
    at_x = ox * sw - pw + (k % kw) * dw + offset[n, g * 2 * points + 2 * k + 1, oy, ox]
    m = mask[n, g * points + k, oy, ox] if has_mask else 1.0
    inside, y0, x0, w, w_dy, w_dx = bilinear_weights(at_y, at_x, x.shape[2], x.shape[3])
    return n, g, k, oy, ox, m, inside, y0, x0, w, w_dy, w_dx


def _count_points(x, offset):
    """How many sampling points: B · G_off · kh · kw · H_out · W_out (one thread each)."""
    return x.shape[0] * (offset.shape[1] // 2) * offset.shape[2] * offset.shape[3]


@cuda.jit
def _im2col_kernel(x, offset, mask, has_mask, cols, geometry, n_points):
    """cols[n, c·K + k, p] = m · Σ_i w_i x[n, c, q_i] for the channels c of offset group g."""
    points = geometry[0] * geometry[1]
    per_offset_group = x.shape[1] * 2 * points // offset.shape[1]
    for t in range(cuda.grid(1), n_points, cuda.gridsize(1)):
        n, g, k, oy, ox, m, inside, y0, x0, w, _, _ = _sampling_point(x, offset, mask, has_mask, t, geometry)
        p = oy * offset.shape[3] + ox
        for c in range(g * per_offset_group, (g + 1) * per_offset_group):
            cols[n, c * points + k, p] = m * interpolate(x, n, c, y0, x0, w) if inside else 0.0


@cuda.jit
def _output_kernel(cols, weight, bias, has_bias, y):
    """y[n, o, p] = b[o] + Σ_{c, k} weight[o, c, k] · cols[n, (g·C_in/groups + c)·K + k, p]."""
    out_channels, per_group, kh, kw = weight.shape
    groups = cols.shape[1] // (per_group * kh * kw)
    out_per_group = out_channels // groups
    n_pixels = y.shape[2] * y.shape[3]
    for t in range(cuda.grid(1), y.shape[0] * out_channels * n_pixels, cuda.gridsize(1)):
        p, o, n = t % n_pixels, (t // n_pixels) % out_channels, t // (n_pixels * out_channels)
        first_row = (o // out_per_group) * per_group * kh * kw
        total = bias[o] if has_bias else 0.0
        for c in range(per_group):
            for i in range(kh):
                for j in range(kw):
                    total += weight[o, c, i, j] * cols[n, first_row + (c * kh + i) * kw + j, p]
        y[n, o, p // y.shape[3], p % y.shape[3]] = total


@cuda.jit
def _grad_cols_kernel(grad_y, weight, grad_cols):
    """grad_cols[n, c·K + k, p] = Σ_{o in c's group} weight[o, c mod C_in/groups, k] · grad_y[n, o, p]."""
    out_channels, per_group, kh, kw = weight.shape
    points = kh * kw
    groups = grad_cols.shape[1] // (per_group * points)
    out_per_group = out_channels // groups
    rows, n_pixels = grad_cols.shape[1], grad_cols.shape[2]
    for t in range(cuda.grid(1), grad_cols.shape[0] * rows * n_pixels, cuda.gridsize(1)):
        p, row, n = t % n_pixels, (t // n_pixels) % rows, t // (n_pixels * rows)
        c, k = row // points, row % points
        g = c // per_group
        oy, ox = p // grad_y.shape[3], p % grad_y.shape[3]
        total = 0.0
        for o in range(g * out_per_group, (g + 1) * out_per_group):
            total += weight[o, c - g * per_group, k // kw, k % kw] * grad_y[n, o, oy, ox]
        grad_cols[n, row, p] = total


@cuda.jit
def _col2im_kernel(x, offset, mask, has_mask, grad_cols, grad_x, grad_offset, grad_mask, geometry, n_points):
    """Scatter grad_cols to grad_x (atomics); grad_offset and grad_mask per sampling point."""
    points = geometry[0] * geometry[1]
    per_offset_group = x.shape[1] * 2 * points // offset.shape[1]
    for t in range(cuda.grid(1), n_points, cuda.gridsize(1)):
        n, g, k, oy, ox, m, inside, y0, x0, w, w_dy, w_dx = _sampling_point(x, offset, mask, has_mask, t, geometry)
        p = oy * offset.shape[3] + ox
        s = (0.0, 0.0, 0.0, 0.0)
        if inside:
            for c in range(g * per_offset_group, (g + 1) * per_offset_group):
                grad = grad_cols[n, c * points + k, p]
                s = add_corner_products(s, grad, x, n, c, y0, x0)
                for i in range(4):  # corner i is (y0 + i // 2, x0 + i % 2); atomics: see cuda/bilinear.py
                    qy, qx = y0 + i // 2, x0 + i % 2
                    if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
                        cuda.atomic.add(grad_x, (n, c, qy, qx), m * w[i] * grad)
        dy_channel = g * 2 * points + 2 * k
        grad_offset[n, dy_channel, oy, ox] = m * corner_sum(w_dy, s)
        grad_offset[n, dy_channel + 1, oy, ox] = m * corner_sum(w_dx, s)
        if has_mask:
            grad_mask[n, g * points + k, oy, ox] = corner_sum(w, s)


@cuda.jit
def _grad_weight_kernel(cols, grad_y, grad_weight):
    """grad_weight[o, c, i, j] = Σ_n Σ_p grad_y[n, o, p] · cols[n, (g·C_in/groups + c)·K + k, p]."""
    out_channels, per_group, kh, kw = grad_weight.shape
    points = kh * kw
    groups = cols.shape[1] // (per_group * points)
    out_per_group = out_channels // groups
    out_w = grad_y.shape[3]
    for t in range(cuda.grid(1), out_channels * per_group * points, cuda.gridsize(1)):
        k, c, o = t % points, (t // points) % per_group, t // (points * per_group)
        row = ((o // out_per_group) * per_group + c) * points + k
        total = 0.0
        for n in range(cols.shape[0]):
            for p in range(cols.shape[2]):
                total += grad_y[n, o, p // out_w, p % out_w] * cols[n, row, p]
        grad_weight[o, c, k // kw, k % kw] = total


@cuda.jit
def _grad_bias_kernel(grad_y, grad_bias):
    """grad_bias[o] = Σ_n Σ_oy Σ_ox grad_y[n, o, oy, ox]."""
    for o in range(cuda.grid(1), grad_y.shape[1], cuda.gridsize(1)):
        total = 0.0
        for n in range(grad_y.shape[0]):
            for oy in range(grad_y.shape[2]):
                for ox in range(grad_y.shape[3]):
                    total += grad_y[n, o, oy, ox]
        grad_bias[o] = total


def _mask_args(mask, dtype):
    """(device mask, has_mask): a 1-element stand-in when there is no mask."""
    if mask is None:
        return CudaArray.zeros((1, 1, 1, 1), dtype), False
    return mask, True


def _columns(x, offset, mask, weight, geometry):
    """The column buffer (B, C_in · kh · kw, H_out · W_out) of the deformable im2col."""
    batch, channels = x.shape[:2]
    points = weight.shape[2] * weight.shape[3]
    cols = CudaArray.empty((batch, channels * points, offset.shape[2] * offset.shape[3]), x.dtype)
    mask, has_mask = _mask_args(mask, x.dtype)
    n_points = _count_points(x, offset)
    _im2col_kernel[grid_for(n_points)](x.dev, offset.dev, mask.dev, has_mask, cols.dev, geometry, n_points)
    return cols


def deform_conv2d_forward(x, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    """y = deform_conv2d(x, offset, weight, bias, mask) as (B, C_out, H_out, W_out)."""
    geometry = (weight.shape[2], weight.shape[3], *stride, *padding, *dilation)
    cols = _columns(x, offset, mask, weight, geometry)
    y = CudaArray.empty((x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]), x.dtype)
    bias_dev, has_bias = (bias, True) if bias is not None else (CudaArray.zeros((1,), x.dtype), False)
    _output_kernel[grid_for(y.size)](cols.dev, weight.dev, bias_dev.dev, has_bias, y.dev)
    return y


def deform_conv2d_backward(grad_y, x, offset, mask, weight, stride, padding, dilation, groups, offset_groups):
    """(grad_x, grad_offset, grad_mask, grad_weight, grad_bias); grad_mask is None without a mask."""
    geometry = (weight.shape[2], weight.shape[3], *stride, *padding, *dilation)
    cols = _columns(x, offset, mask, weight, geometry)
    grad_weight = CudaArray.empty(weight.shape, x.dtype)
    _grad_weight_kernel[grid_for(weight.size)](cols.dev, grad_y.dev, grad_weight.dev)
    grad_bias = CudaArray.empty((weight.shape[0],), x.dtype)
    _grad_bias_kernel[grid_for(weight.shape[0])](grad_y.dev, grad_bias.dev)

    grad_cols = cols  # the columns are no longer needed: reuse the buffer
    _grad_cols_kernel[grid_for(cols.size)](grad_y.dev, weight.dev, grad_cols.dev)
    grad_x = CudaArray.zeros(x.shape, x.dtype)
    grad_offset = CudaArray.empty(offset.shape, x.dtype)
    mask_dev, has_mask = _mask_args(mask, x.dtype)
    grad_mask = CudaArray.empty(mask.shape, x.dtype) if has_mask else CudaArray.zeros((1, 1, 1, 1), x.dtype)
    n_points = _count_points(x, offset)
    _col2im_kernel[grid_for(n_points)](x.dev, offset.dev, mask_dev.dev, has_mask, grad_cols.dev, grad_x.dev,
                                       grad_offset.dev, grad_mask.dev, geometry, n_points)
    return grad_x, grad_offset, grad_mask if has_mask else None, grad_weight, grad_bias
