"""Deformable convolution (DCN v1 / v2) as deformable im2col + GEMM (numba_cpu backend).

The formula and the layouts are in ``backends/reference/deform_conv.py``:

    y[n, o, p0] = b[o] + Σ_c Σ_k w[o, c, k] · m[n, g(c), k, p0] · x[n, c](p0 + p_k + Δp[n, g(c), k, p0])

with p0 + p_k + Δp_k = (oy s_h - p_h + i d_h + dy, ox s_w - p_w + j d_w + dx) for kernel point
k = i kw + j, offset group g(c) = c // (C_in / G_off), and x(·) bilinear sampling with zero
padding (``bilinear.py``).  Here it runs in three steps:

1. **Deformable im2col** (``_im2row``).  For every output pixel, write one row holding all
   the C_in · kh · kw sampled (and masked) values the output needs.  The sampling corner and
   the four bilinear weights depend on (image, offset group, kernel point, output pixel), not
   on the channel: they are computed once (``bilinear_weights``, from the offsets read a row
   at a time by ``_kernel_point_rows``) and reused for every channel of the offset group.
   To make that channel loop contiguous, the input is
   first copied to channels-last order with a zero border one pixel wide (``_Plan.pad``), so
   the four corners of a point are four contiguous runs of channels and no bounds check is
   needed: the zero border *is* the zero padding.
2. **GEMM** (NumPy's ``matmul``, i.e. BLAS): out = rows @ weightᵀ, one product per weight
   group.  Rows are pixel-major, (N·H_out·W_out, C_in·kh·kw): a tall, thin product that BLAS
   runs at full speed.
3. Transpose the result back to (B, C_out, H_out, W_out) and add the bias.

Backward reuses the same rows: grad_weight = Σ_chunks rowsᵀ @ grad_out (summed in a fixed
order), then grad_rows = grad_out @ weight overwrites the rows buffer, and ``_row2im``
scatters grad_rows to grad_input while reducing it, per sampling point, into grad_offset
and grad_mask.

Chunks.  The rows of B images can be large (C_in · kh · kw · H_out · W_out values per image),
so images are processed in chunks whose scratch buffers (rows, the padded copies of input
and grad_input, the GEMM output) fit in ``COLUMN_BUDGET_BYTES`` (64 MiB by default; change
it with :func:`set_column_budget`).  The chunks are as few as the budget allows and of equal
size (8 images that fit 5 at a time run as 4 + 4); an image larger than the budget is
processed alone.

Threads.  Every ``prange`` gives a thread outputs it owns: whole output rows in the im2col,
a whole (image, offset group) in ``_row2im`` (its channels of grad_input, its channels of
grad_offset and grad_mask).  Nothing is shared, every sum runs in a fixed order, so results
are bitwise the same for any ``NUMBA_NUM_THREADS``.  The price: ``_row2im`` has only
(images in the chunk) × G_off tasks, so a chunk of one image with one offset group runs it
on one thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bilinear import bilinear_weights, corner_sum
from .chunks import equal_chunks
from .floating import REORDER

__all__ = ["deform_conv2d_forward", "deform_conv2d_backward"]  # set_column_budget: a knob, not a kernel

COLUMN_BUDGET_BYTES = 64 * 2**20
"""Scratch memory per chunk of images, in bytes (see the module docstring)."""


def set_column_budget(nbytes: int) -> int:
    """Set the scratch budget per chunk of images (bytes, >= 1); returns the previous one.

    A smaller budget means smaller chunks: less memory, more (smaller) GEMMs.  Results
    change only by floating-point round-off: BLAS may block a smaller product differently,
    and grad_weight adds up one product per chunk (in a fixed order).  For a given budget
    the results are bitwise reproducible.
    """
    global COLUMN_BUDGET_BYTES
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ValueError(f"set_column_budget: nbytes must be an int >= 1, got {nbytes!r}")
    previous, COLUMN_BUDGET_BYTES = COLUMN_BUDGET_BYTES, int(nbytes)
    return previous


# ----------------------------------------------------------------------------- kernels
@njit(cache=True)
def _channel_run(g, c_lo, c_hi, per_group):
    """(start, count): the channels of [c_lo, c_hi) that belong to weight group g.

    An offset group's channels [c_lo, c_hi) may span several weight groups (or lie inside
    one); the kernels walk them weight group by weight group, g from c_lo // per_group to
    (c_hi - 1) // per_group, so that each run is contiguous in the input and in the rows.
    """
    start = max(c_lo, g * per_group)
    return start, min(c_hi, (g + 1) * per_group) - start


@njit(cache=True)
def _corner_runs(image, y0, x0, start):
    """Channels start, start+1, ... of the four corners of (y0, x0), as 1-D views.

    ``image`` is one (H+2, W+2, C) channels-last image with its zero border, so pixel (y, x)
    is image[y + 1, x + 1]; the corners come in the order (y0, x0), (y0, x0+1), (y0+1, x0),
    (y0+1, x0+1).  Views indexed from 0 have no negative index to wrap around, so loops over
    them compile to vector instructions.
    """
    top, bottom = image[y0 + 1], image[y0 + 2]
    return top[x0 + 1, start:], top[x0 + 2, start:], bottom[x0 + 1, start:], bottom[x0 + 2, start:]


@njit(cache=True)
def _kernel_point_rows(offset, mask, n, og, k, oy, geometry):
    """Kernel point k of offset group og along output row oy of image n, as rows over ox.

    Output pixel (oy, ox) samples at (y + dy[ox], ox·s_w + x + dx[ox]) with mask value m[ox],
    where y = oy s_h - p_h + i d_h and x = j d_w - p_w for k = i kw + j, and dy, dx are
    offset channels og·2K + 2k and og·2K + 2k + 1.  Returns (dy, dx, m, y, x).  Reading
    whole rows keeps the loops over ox on contiguous memory.
    """
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    points = kh * kw
    dy_channel = og * 2 * points + 2 * k
    return (offset[n, dy_channel, oy], offset[n, dy_channel + 1, oy], mask[n, og * points + k, oy],
            oy * sh - ph + (k // kw) * dh, (k % kw) * dw - pw)


@njit(cache=True, parallel=True)
def _im2row(xpad, offset, mask, rows, geometry):
    """Deformable im2col, pixel-major: one row of sampled values per output pixel.

    xpad:   (N, H+2, W+2, C) channels-last input with a zero border (pixel (y, x) at [y+1, x+1]).
    offset: (N, 2·G_off·K, H_out, W_out);  mask: (N, G_off·K, H_out, W_out) (ones if none).
    rows:   (N·H_out·W_out, groups, K, C/groups), written in full:

        rows[n·P + p, g, k, c - g·C/groups] = m · Σ_i w_i · xpad[n, corner_i + 1, c]

    for the channels c of weight group g.  One thread per (image, output row); it walks the
    kernel points in the outer loop and the output pixels of its row in the inner one, so
    that the offsets and the mask are read along contiguous rows.
    """
    n_images, height, width, channels = xpad.shape[0], xpad.shape[1] - 2, xpad.shape[2] - 2, xpad.shape[3]
    out_h, out_w = offset.shape[2], offset.shape[3]
    points = geometry[0] * geometry[1]
    offset_groups = offset.shape[1] // (2 * points)
    per_offset_group = channels // offset_groups
    per_group = rows.shape[3]
    cast = rows.dtype.type  # weights in the data's precision: float32 data stays float32
    stride_x = geometry[3]
    for task in prange(n_images * out_h):
        n, oy = task // out_h, task % out_h
        image = xpad[n]
        for og in range(offset_groups):
            c_lo, c_hi = og * per_offset_group, (og + 1) * per_offset_group
            for k in range(points):
                dy, dx, m, y, x = _kernel_point_rows(offset, mask, n, og, k, oy, geometry)
                for ox in range(out_w):
                    inside, y0, x0, w, _, _ = bilinear_weights(y + dy[ox], ox * stride_x + x + dx[ox],
                                                               height, width)
                    w00, w01, w10, w11 = (cast(m[ox] * w[0]), cast(m[ox] * w[1]),
                                          cast(m[ox] * w[2]), cast(m[ox] * w[3]))
                    row = rows[task * out_w + ox]
                    for g in range(c_lo // per_group, (c_hi - 1) // per_group + 1):
                        start, count = _channel_run(g, c_lo, c_hi, per_group)
                        out = row[g, k, start - g * per_group:]
                        if inside:
                            v00, v01, v10, v11 = _corner_runs(image, y0, x0, start)
                            for t in range(count):
                                out[t] = w00 * v00[t] + w01 * v01[t] + w10 * v10[t] + w11 * v11[t]
                        else:  # skip the reads: 0 · inf would be NaN
                            for t in range(count):
                                out[t] = 0.0


@njit(cache=True, parallel=True, fastmath=REORDER)
def _row2im(xpad, offset, mask, has_mask, grad_rows, grad_xpad, grad_offset, grad_mask, geometry):
    """The adjoint of ``_im2row``, with the gradients of the sampling points.

    For every sampling point (image n, offset group g, kernel point k, output pixel p), with
    bilinear weights w_i (and derivatives w_dy_i, w_dx_i) for its corners q_i, and G_c the
    entry of grad_rows for channel c at that point:

        grad_xpad[n, q_i + 1, c] += m · w_i · G_c                  (scatter)
        S_i = Σ_c G_c · x_c(q_i)                                   (gradient reaching corner i)
        grad_offset[n, dy of (g, k), p] = m · Σ_i w_dy_i S_i
        grad_offset[n, dx of (g, k), p] = m · Σ_i w_dx_i S_i
        grad_mask[n, (g, k), p]         =     Σ_i w_i S_i

    One thread per (image, offset group): it alone writes that group's channels of
    grad_xpad[n] (which must start at zero) and its channels of grad_offset / grad_mask.
    The sums S_i over channels are float64 and compiled with the REORDER licences, so they
    use the vector unit; their order is fixed at compile time (see ``floating.py``).
    """
    n_images, height, width = xpad.shape[0], xpad.shape[1] - 2, xpad.shape[2] - 2
    out_h, out_w = offset.shape[2], offset.shape[3]
    points = geometry[0] * geometry[1]
    stride_x = geometry[3]
    offset_groups = offset.shape[1] // (2 * points)
    per_offset_group = xpad.shape[3] // offset_groups
    per_group = grad_rows.shape[3]
    cast = xpad.dtype.type
    for task in prange(n_images * offset_groups):
        n, og = task // offset_groups, task % offset_groups
        c_lo, c_hi = og * per_offset_group, (og + 1) * per_offset_group
        image, grad_image = xpad[n], grad_xpad[n]
        for oy in range(out_h):
            for k in range(points):
                dy, dx, m, y, x = _kernel_point_rows(offset, mask, n, og, k, oy, geometry)
                dy_channel = og * 2 * points + 2 * k
                for ox in range(out_w):
                    inside, y0, x0, w, w_dy, w_dx = bilinear_weights(
                        y + dy[ox], ox * stride_x + x + dx[ox], height, width)
                    s00, s01, s10, s11 = 0.0, 0.0, 0.0, 0.0
                    if inside:
                        g00, g01, g10, g11 = (cast(m[ox] * w[0]), cast(m[ox] * w[1]),
                                              cast(m[ox] * w[2]), cast(m[ox] * w[3]))
                        row = grad_rows[(n * out_h + oy) * out_w + ox]
                        for g in range(c_lo // per_group, (c_hi - 1) // per_group + 1):
                            start, count = _channel_run(g, c_lo, c_hi, per_group)
                            grad = row[g, k, start - g * per_group:]
                            v00, v01, v10, v11 = _corner_runs(image, y0, x0, start)
                            for t in range(count):
                                s00 += grad[t] * v00[t]
                                s01 += grad[t] * v01[t]
                                s10 += grad[t] * v10[t]
                                s11 += grad[t] * v11[t]
                            a00, a01, a10, a11 = _corner_runs(grad_image, y0, x0, start)
                            for t in range(count):
                                a00[t] += g00 * grad[t]
                                a01[t] += g01 * grad[t]
                                a10[t] += g10 * grad[t]
                                a11[t] += g11 * grad[t]
                    s = (s00, s01, s10, s11)
                    grad_offset[n, dy_channel, oy, ox] = m[ox] * corner_sum(w_dy, s)
                    grad_offset[n, dy_channel + 1, oy, ox] = m[ox] * corner_sum(w_dx, s)
                    if has_mask:
                        grad_mask[n, og * points + k, oy, ox] = corner_sum(w, s)


# ----------------------------------------------------------------------------- host side
class _Plan:
    """Shapes, GEMM operands and reusable chunk buffers shared by forward and backward."""

    def __init__(self, x, offset, weight, stride, padding, dilation, groups, need_grad_input):
        self.batch, self.channels, self.height, self.width = x.shape
        self.out_channels, self.per_group, kh, kw = weight.shape
        self.groups = groups
        self.out_h, self.out_w = offset.shape[2], offset.shape[3]
        self.pixels = self.out_h * self.out_w
        self.points = kh * kw
        self.geometry = (kh, kw, *stride, *padding, *dilation)
        # weight as (groups, K·C_in/groups, C_out/groups): row k·C_in/groups + c, matching rows
        self.weight_t = np.ascontiguousarray(
            weight.reshape(groups, self.out_channels // groups, self.per_group, self.points)
            .transpose(0, 3, 2, 1).reshape(groups, self.points * self.per_group, -1))
        padded = (self.height + 2) * (self.width + 2) * self.channels
        row_values = self.channels * self.points
        per_image = x.itemsize * self.pixels * (row_values + self.out_channels)
        per_image += x.itemsize * padded * (2 if need_grad_input else 1)
        self.chunk_bounds = equal_chunks(self.batch, per_image, COLUMN_BUDGET_BYTES)
        self.chunk = self.chunk_bounds[0][1]  # images in the first chunk, the largest
        self.rows = np.empty((self.chunk * self.pixels, groups, self.points, self.per_group), x.dtype)
        self.xpad = np.zeros((self.chunk, self.height + 2, self.width + 2, self.channels), x.dtype)

    def chunks(self):
        """(first image, end image) of each chunk, in order."""
        return self.chunk_bounds

    def pad(self, x, start, end):
        """The chunk's input, channels-last inside the zero border of ``self.xpad``."""
        xpad = self.xpad[: end - start]
        xpad[:, 1:-1, 1:-1, :] = x[start:end].transpose(0, 2, 3, 1)
        return xpad

    def group_columns(self, flat, g):
        """The block of a (M, groups·width) matrix that belongs to weight group g."""
        width = flat.shape[1] // self.groups
        return flat[:, g * width:(g + 1) * width]


def _mask_args(mask, offset):
    """(mask, has_mask) for the kernels: without a mask, ones (a broadcast view, no memory)."""
    if mask is None:
        points = offset.shape[1] // 2
        ones = np.ones((1, 1, 1, 1), offset.dtype)
        return np.broadcast_to(ones, (offset.shape[0], points) + offset.shape[2:]), False
    return np.ascontiguousarray(mask), True


def deform_conv2d_forward(x, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    """y = deform_conv2d(x, offset, weight, bias, mask) as (B, C_out, H_out, W_out)."""
    x, offset, weight = np.ascontiguousarray(x), np.ascontiguousarray(offset), np.ascontiguousarray(weight)
    mask, _ = _mask_args(mask, offset)
    plan = _Plan(x, offset, weight, stride, padding, dilation, groups, need_grad_input=False)
    y = np.empty((plan.batch, plan.out_channels, plan.pixels), dtype=x.dtype)
    out = np.empty((plan.chunk * plan.pixels, plan.out_channels), dtype=x.dtype)
    for start, end in plan.chunks():
        size = (end - start) * plan.pixels
        rows = plan.rows[:size]
        _im2row(plan.pad(x, start, end), offset[start:end], mask[start:end], rows, plan.geometry)
        flat_rows, flat_out = rows.reshape(size, -1), out[:size]
        for g in range(groups):
            np.matmul(plan.group_columns(flat_rows, g), plan.weight_t[g], out=plan.group_columns(flat_out, g))
        y[start:end] = flat_out.reshape(end - start, plan.pixels, plan.out_channels).transpose(0, 2, 1)
    if bias is not None:
        y += np.asarray(bias, dtype=x.dtype)[:, None]
    return y.reshape(plan.batch, plan.out_channels, plan.out_h, plan.out_w)


def deform_conv2d_backward(grad_y, x, offset, mask, weight, stride, padding, dilation, groups, offset_groups):
    """(grad_x, grad_offset, grad_mask, grad_weight, grad_bias); grad_mask is None without a mask."""
    grad_y = np.ascontiguousarray(grad_y)
    x, offset, weight = np.ascontiguousarray(x), np.ascontiguousarray(offset), np.ascontiguousarray(weight)
    mask, has_mask = _mask_args(mask, offset)
    plan = _Plan(x, offset, weight, stride, padding, dilation, groups, need_grad_input=True)
    grad_x = np.empty_like(x)
    grad_offset = np.empty_like(offset)
    grad_mask = np.empty(mask.shape if has_mask else (0, 0, 0, 0), x.dtype)  # unused without a mask
    grad_weight_t = np.zeros_like(plan.weight_t)
    grad_xpad = np.empty_like(plan.xpad)
    grad_out = np.empty((plan.chunk * plan.pixels, plan.out_channels), dtype=x.dtype)
    for start, end in plan.chunks():
        size = (end - start) * plan.pixels
        rows = plan.rows[:size]
        xpad = plan.pad(x, start, end)
        _im2row(xpad, offset[start:end], mask[start:end], rows, plan.geometry)
        flat_rows, flat_grad = rows.reshape(size, -1), grad_out[:size]
        flat_grad.reshape(end - start, plan.pixels, -1)[...] = (
            grad_y[start:end].reshape(end - start, plan.out_channels, plan.pixels).transpose(0, 2, 1))
        for g in range(groups):
            rows_g, grad_g = plan.group_columns(flat_rows, g), plan.group_columns(flat_grad, g)
            grad_weight_t[g] += rows_g.T @ grad_g
            np.matmul(grad_g, plan.weight_t[g].T, out=rows_g)  # rows now hold grad_rows
        chunk_grad_xpad = grad_xpad[: end - start]
        chunk_grad_xpad.fill(0)
        _row2im(xpad, offset[start:end], mask[start:end], has_mask, rows, chunk_grad_xpad,
                grad_offset[start:end], grad_mask[start:end], plan.geometry)
        grad_x[start:end] = chunk_grad_xpad[:, 1:-1, 1:-1, :].transpose(0, 3, 1, 2)
    kh, kw = plan.geometry[:2]
    grad_weight = (grad_weight_t.reshape(groups, kh, kw, plan.per_group, -1)
                   .transpose(0, 4, 3, 1, 2).reshape(weight.shape))
    grad_bias = grad_y.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    return grad_x, grad_offset, grad_mask if has_mask else None, np.ascontiguousarray(grad_weight), grad_bias
