"""Deformable convolution (DCN v1 / v2) as deformable im2col + GEMM (numba_cpu backend).

The formula and the layouts are in ``backends/reference/deform_conv.py``:

    y[n, o, p0] = b[o] + Σ_c Σ_k w[o, c, k] · m[n, g(c), k, p0] · x[n, c](p0 + p_k + Δp[n, g(c), k, p0])

with p0 + p_k + Δp_k = (oy s_h - p_h + i d_h + dy, ox s_w - p_w + j d_w + dx) for kernel point
k = i kw + j, offset group g(c) = c // (C_in / G_off), and x(·) bilinear sampling with zero
padding (``bilinear.py``).  Here it runs in three steps:

1. **Deformable im2col** (``_im2row``).  For every output pixel, write one row holding all
   the C_in · kh · kw sampled (and masked) values the output needs.  The sampling corner and
   the four bilinear weights depend on (image, offset group, kernel point, output pixel), not
   on the channel: they are computed once (``bilinear_weights``, at the point that
   ``_sampling_point`` reads from the offsets) and reused for every channel of the offset
   group.  To make that channel loop contiguous, the input is first copied to channels-last
   order with a zero border one pixel wide (``layout.pad_channels_last``), so the four
   corners of a point are four contiguous runs of channels and no bounds check is needed:
   the zero border *is* the zero padding.
2. **GEMM** (NumPy's ``matmul``, i.e. BLAS, through ``products.py``): product = rows @ weightᵀ,
   one product per weight group.  Rows are pixel-major, (N·H_out·W_out, C_in·kh·kw): a tall, thin product that BLAS
   runs at full speed.
3. ``layout.product_to_output`` transposes the product into (B, C_out, H_out, W_out) and
   adds the bias in the same pass.

Backward reuses the same rows: grad_weight = Σ_chunks rowsᵀ @ grad_out (summed in a fixed
order), then grad_rows = grad_out @ weight overwrites the rows buffer, and ``_row2im``
scatters grad_rows to grad_input while reducing it, per sampling point, into grad_offset
and grad_mask.

What made it fast (measured on the 2-core development machine, one thread, 8 images of 64
channels at 64×64; the three BLAS products are now about half of the time):

* **Rows written and read from start to end.**  Both kernels walk the output pixels in the
  outer loop and the kernel points in the inner one, so that each pixel's row (2.3 KB) is
  one sequential stream.  Walked kernel point by kernel point instead, consecutive accesses
  jump a whole row and the hardware prefetcher cannot follow: ``_row2im`` was 1.3x slower.
* **Sums in the vector unit.**  ``_row2im``'s channel sums S_i run in the data's precision
  (float32 for float32 data: twice the lanes of float64, no conversions) over one weight
  group's channels, then add up in float64 across groups and corners (another 1.3x).
* **Chunks that stay in the cache** (``chunks.py``): 1.3-1.4x, see below.
* **Both cores in the products**: with BLAS on one thread (``minidcn/threads.py``), the
  products run in pieces of rows on numba's number of threads (``products.py``).
* **No NumPy transposes.**  The copies into channels-last order and back, and between the
  product's (pixels × channels) layout and (B, C, H, W), are Numba loops that keep the
  strided side in the L1 cache (``layout.py``); NumPy's transposing assignments took
  1.1-2.2x as long at these sizes.

Chunks.  The rows of B images can be large (C_in · kh · kw · H_out · W_out values per image),
so images are processed in chunks whose scratch buffers (rows, the padded copies of input
and grad_input, the GEMM output) fit in ``COLUMN_BUDGET_BYTES`` (64 MiB by default; change
it with :func:`set_column_budget`), and, within that bound, in ``chunks.CACHE_BYTES`` (but at
least two images): the rows are then still in the cache when BLAS reads them back.  The
chunks are of equal size (8 images that fit 5 at a time run as 4 + 4); an image larger than
the budget is processed alone.

Threads.  Every ``prange`` gives a thread outputs it owns: whole output rows in the im2col,
a whole (image, offset group) in ``_row2im`` (its channels of grad_input, its channels of
grad_offset and grad_mask).  Nothing is shared, every sum runs in a fixed order, so results
are bitwise the same for any ``NUMBA_NUM_THREADS``.  The price: ``_row2im`` has only
(images in the chunk) × G_off tasks, so a chunk of one image with one offset group runs it
on one thread (which is why a chunk holds two images where the budget allows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bilinear import bilinear_weights, corner_sum
from .chunks import equal_chunks
from .floating import REORDER
from .layout import crop_channels_first, output_to_product, pad_channels_last, product_to_output
from .products import matmul_rows, sum_of_products

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
def _sampling_point(offset, mask, n, og, k, oy, ox, geometry):
    """(y, x, m): where kernel point k of offset group og samples for output pixel (oy, ox)
    of image n, and its mask value.

    y = oy s_h - p_h + i d_h + dy and x = ox s_w - p_w + j d_w + dx for k = i kw + j, with
    dy, dx the offset channels og·2K + 2k and og·2K + 2k + 1.
    """
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    points = kh * kw
    dy_channel = og * 2 * points + 2 * k
    return (oy * sh - ph + (k // kw) * dh + offset[n, dy_channel, oy, ox],
            ox * sw - pw + (k % kw) * dw + offset[n, dy_channel + 1, oy, ox],
            mask[n, og * points + k, oy, ox])


@njit(cache=True, parallel=True)
def _im2row(xpad, offset, mask, rows, geometry):
    """Deformable im2col, pixel-major: one row of sampled values per output pixel.

    xpad:   (N, H+2, W+2, C) channels-last input with a zero border (pixel (y, x) at [y+1, x+1]).
    offset: (N, 2·G_off·K, H_out, W_out);  mask: (N, G_off·K, H_out, W_out) (ones if none).
    rows:   (N·H_out·W_out, groups, K, C/groups), written in full:

        rows[n·P + p, g, k, c - g·C/groups] = m · Σ_i w_i · xpad[n, corner_i + 1, c]

    for the channels c of weight group g.  One thread per (image, output row); it walks the
    output pixels of its row in the outer loop and the kernel points in the inner one, so
    that it writes each row from start to end (the offsets and the mask, read along 3·K
    contiguous rows, are a small part of the traffic).
    """
    n_images, height, width, channels = xpad.shape[0], xpad.shape[1] - 2, xpad.shape[2] - 2, xpad.shape[3]
    out_h, out_w = offset.shape[2], offset.shape[3]
    points = geometry[0] * geometry[1]
    offset_groups = offset.shape[1] // (2 * points)
    per_offset_group = channels // offset_groups
    per_group = rows.shape[3]
    cast = rows.dtype.type  # weights in the data's precision: float32 data stays float32
    for task in prange(n_images * out_h):
        n, oy = task // out_h, task % out_h
        image = xpad[n]
        for ox in range(out_w):
            row = rows[task * out_w + ox]
            for og in range(offset_groups):
                c_lo, c_hi = og * per_offset_group, (og + 1) * per_offset_group
                for k in range(points):
                    y, x, m = _sampling_point(offset, mask, n, og, k, oy, ox, geometry)
                    inside, y0, x0, w, _, _ = bilinear_weights(y, x, height, width)
                    w00, w01, w10, w11 = cast(m * w[0]), cast(m * w[1]), cast(m * w[2]), cast(m * w[3])
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
    grad_xpad[n] (which must start at zero) and its channels of grad_offset / grad_mask.  It
    walks the output pixels in order and, for each, its kernel points, so grad_rows is read
    from start to end (see the module docstring).
    The sums S_i run in the data's precision over each weight group's channels, then add up
    in float64; they are compiled with the REORDER licences, so they use the vector unit, and
    their order is fixed at compile time (see ``floating.py``).
    """
    n_images, height, width = xpad.shape[0], xpad.shape[1] - 2, xpad.shape[2] - 2
    out_h, out_w = offset.shape[2], offset.shape[3]
    points = geometry[0] * geometry[1]
    offset_groups = offset.shape[1] // (2 * points)
    per_offset_group = xpad.shape[3] // offset_groups
    per_group = grad_rows.shape[3]
    cast = xpad.dtype.type
    for task in prange(n_images * offset_groups):
        n, og = task // offset_groups, task % offset_groups
        c_lo, c_hi = og * per_offset_group, (og + 1) * per_offset_group
        image, grad_image = xpad[n], grad_xpad[n]
        for oy in range(out_h):
            for ox in range(out_w):
                row = grad_rows[(n * out_h + oy) * out_w + ox]
                for k in range(points):
                    y, x, m = _sampling_point(offset, mask, n, og, k, oy, ox, geometry)
                    inside, y0, x0, w, w_dy, w_dx = bilinear_weights(y, x, height, width)
                    s00, s01, s10, s11 = 0.0, 0.0, 0.0, 0.0
                    if inside:
                        g00, g01, g10, g11 = cast(m * w[0]), cast(m * w[1]), cast(m * w[2]), cast(m * w[3])
                        for g in range(c_lo // per_group, (c_hi - 1) // per_group + 1):
                            start, count = _channel_run(g, c_lo, c_hi, per_group)
                            grad = row[g, k, start - g * per_group:]
                            v00, v01, v10, v11 = _corner_runs(image, y0, x0, start)
                            r00, r01, r10, r11 = cast(0.0), cast(0.0), cast(0.0), cast(0.0)
                            for t in range(count):
                                r00 += grad[t] * v00[t]
                                r01 += grad[t] * v01[t]
                                r10 += grad[t] * v10[t]
                                r11 += grad[t] * v11[t]
                            s00, s01, s10, s11 = s00 + r00, s01 + r01, s10 + r10, s11 + r11
                            a00, a01, a10, a11 = _corner_runs(grad_image, y0, x0, start)
                            for t in range(count):
                                a00[t] += g00 * grad[t]
                                a01[t] += g01 * grad[t]
                                a10[t] += g10 * grad[t]
                                a11[t] += g11 * grad[t]
                    s = (s00, s01, s10, s11)
                    dy_channel = og * 2 * points + 2 * k
                    grad_offset[n, dy_channel, oy, ox] = m * corner_sum(w_dy, s)
                    grad_offset[n, dy_channel + 1, oy, ox] = m * corner_sum(w_dx, s)
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
        self.product = np.empty((groups, self.chunk * self.pixels, self.out_channels // groups), x.dtype)

    def chunks(self):
        """(first image, end image) of each chunk, in order."""
        return self.chunk_bounds

    def pad(self, x, start, end):
        """The chunk's input, channels-last inside the zero border of ``self.xpad``."""
        xpad = self.xpad[: end - start]
        pad_channels_last(x[start:end], (1, 1), xpad)
        return xpad

    def by_group(self, rows):
        """rows as (groups, M, K·C_in/groups): a view, one GEMM operand per weight group."""
        return rows.reshape(rows.shape[0], self.groups, -1).transpose(1, 0, 2)

    def flat(self, a):
        """An (n, C_out, H_out, W_out) array as (n, C_out, H_out·W_out): a view."""
        return a.reshape(a.shape[0], self.out_channels, self.pixels)


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
    bias = np.zeros(plan.out_channels, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    y = np.empty((plan.batch, plan.out_channels, plan.out_h, plan.out_w), dtype=x.dtype)
    for start, end in plan.chunks():
        size = (end - start) * plan.pixels
        rows, product = plan.rows[:size], plan.product[:, :size]
        _im2row(plan.pad(x, start, end), offset[start:end], mask[start:end], rows, plan.geometry)
        matmul_rows(plan.by_group(rows), plan.weight_t, product)
        product_to_output(product, bias, plan.flat(y[start:end]))
    return y


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
    w = plan.weight_t.transpose(0, 2, 1)  # (groups, C_out/groups, K·C_in/groups)
    for start, end in plan.chunks():
        size = (end - start) * plan.pixels
        rows, grad_product = plan.rows[:size], plan.product[:, :size]
        xpad = plan.pad(x, start, end)
        _im2row(xpad, offset[start:end], mask[start:end], rows, plan.geometry)
        output_to_product(plan.flat(grad_y[start:end]), grad_product)
        by_group = plan.by_group(rows)
        grad_weight_t += sum_of_products(by_group, grad_product)
        matmul_rows(grad_product, w, by_group)  # rows now hold grad_rows
        chunk_grad_xpad = grad_xpad[: end - start]
        chunk_grad_xpad.fill(0)
        _row2im(xpad, offset[start:end], mask[start:end], has_mask, rows, chunk_grad_xpad,
                grad_offset[start:end], grad_mask[start:end], plan.geometry)
        crop_channels_first(chunk_grad_xpad, (1, 1), grad_x[start:end])
    kh, kw = plan.geometry[:2]
    grad_weight = (grad_weight_t.reshape(groups, kh, kw, plan.per_group, -1)
                   .transpose(0, 4, 3, 1, 2).reshape(weight.shape))
    grad_bias = grad_y.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    return grad_x, grad_offset, grad_mask if has_mask else None, np.ascontiguousarray(grad_weight), grad_bias
