"""2-D convolution as pixel-major im2col + BLAS products (numba backend).

The formula is the one in ``backends/reference/conv.py`` (read its docstring first).  The
reference lowers it to one matrix product per image and group over a column matrix made by
NumPy slicing, channel-major: cols (K × L), K = C_g·kh·kw values per output pixel, L output
pixels.  This backend makes the same matrix, stored the other way round (one *row* per
output pixel), with Numba loops, and gives every product to BLAS:

    rows[n, i, j, g, (u·kw + v)·C_g + c] = x_pad[n, g·C_g + c, i·s_h + u·d_h, j·s_w + v·d_w]

    product[g]          (n·L × O_g) = rows[:, g] (n·L × K) @ w[g]ᵀ (K × O_g)
    y[n, g·O_g + o, p]               = product[g, n·L + p, o] + bias[g·O_g + o]
    grad_w[g]ᵀ          (K × O_g)  += rows[:, g]ᵀ (K × n·L) @ grad_product[g] (n·L × O_g)
    grad_rows[:, g]     (n·L × K)    = grad_product[g] (n·L × O_g) @ w[g] (O_g × K)

for a chunk of n images with L output pixels each (grad_product is grad_y in the product's
layout); grad_x gathers grad_rows back, each input pixel summing the entries that were copied
from it (``row2im``, the adjoint of ``im2row``).

What makes it fast, for a student comparing it with the reference:

* **One product of depth K = C_g·kh·kw, not kh·kw products of depth C_g.**  A matrix product
  reaches BLAS's peak only when each sum is long.  An earlier version of this backend summed
  kh·kw products over shifted views of the padded input (no column matrix at all), and a
  narrow layer (16 -> 32 channels) lost to NumPy's im2col: each of its 9 products summed only
  16 terms.  Here the sum has 144 terms there, 576 at 64 channels.
* **Contiguous runs, in the order BLAS reads them.**  The input is first copied to
  channels-last order inside a zero border (``layout.pad_channels_last``).  Then the C_g values of
  one (pixel, kernel point, group) are one contiguous run in the input and one in the row, so
  ``im2row`` is a string of short memory copies with no bounds checks (the border *is* the
  zero padding).  Pixel-major rows (every row contiguous) are also the layout OpenBLAS
  multiplies fastest here, faster than the channel-major cols for all three products.
* **The product in the orientation BLAS runs fastest.**  Each group's product is computed
  as rows (n·L × K) @ w[g]ᵀ (K × O_g); asking BLAS for w[g] @ rowsᵀ straight into y's
  layout was about 40% slower here.  A tiled Numba transpose (``layout.product_to_output``) then
  moves the (n·L × O_g) result into (B, C_out, H_out, W_out) and adds the bias in the same
  pass; backward runs it the other way round for grad_y (``layout.output_to_product``), and
  grad_rows overwrites the rows once grad_w has used them (no second buffer).
* **Both cores in the products.**  minidcn keeps BLAS on one thread (``minidcn/threads.py``),
  so ``products.py`` cuts each product into pieces of rows and multiplies them on numba's
  number of threads at once, with the same bits for any number of threads.
* **A gather, not a scatter, for grad_x.**  ``row2im`` gives each thread whole rows of
  grad_x: for one input row it sums, pixel by pixel, the (at most kh·kw) entries of grad_rows
  that came from it, in a fixed order (u, then the output pixel j), into a channels-last scratch row, then
  writes that row out transposed.  No thread writes where another does and no buffer needs
  zeroing, so the result is bitwise the same for any number of numba threads.

Images are processed in chunks whose scratch buffers (padded copy, rows, product) fit in
``CHUNK_BUFFER_BYTES``: the rows of one 64-channel 64×64 image take 9.4 MB.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..reference.conv import output_size
from .chunks import equal_chunks
from .layout import output_to_product, pad_channels_last, product_to_output
from .products import matmul_rows, sum_of_products

__all__ = ["conv2d_forward", "conv2d_backward"]

CHUNK_BUFFER_BYTES = 32 << 20  # the scratch buffers of one chunk of images stay below 32 MiB


# ----------------------------------------------------------------------------- kernels
@njit(cache=True, parallel=True)
def im2row(xpad, kernel, stride, dilation, rows):
    """rows[n, i, j, g, (u·kw + v)·C_g + c] = xpad[n, i·s_h + u·d_h, j·s_w + v·d_w, g·C_g + c].

    xpad: (n, H + 2p_h, W + 2p_w, C) channels-last with its zero border; rows: (n, H_out,
    W_out, G, kh·kw·C_g), written in full.  Every index stays inside xpad by the definition
    of H_out and W_out.  One thread per (image, output row).  Without groups and dilation
    along x, the kw points of one kernel row are kw neighbouring pixels in xpad and kw
    neighbouring runs in the row: one copy of kw·C values instead of kw copies of C.
    """
    n_images, channels = xpad.shape[0], xpad.shape[3]
    out_h, out_w, groups = rows.shape[1], rows.shape[2], rows.shape[3]
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    per_group = channels // groups
    merged = groups == 1 and dw == 1
    for task in prange(n_images * out_h):
        n, i = task // out_h, task % out_h
        for j in range(out_w):
            row = rows[n, i, j]
            for u in range(kh):
                line = xpad[n, i * sh + u * dh]
                if merged:
                    out, src = row[0, u * kw * channels:], line[j * sw:]
                    for q in range(kw):
                        for c in range(channels):
                            out[q * channels + c] = src[q, c]
                    continue
                for v in range(kw):
                    pixel = line[j * sw + v * dw]
                    k = u * kw + v
                    for g in range(groups):
                        out, src = row[g, k * per_group:], pixel[g * per_group:]
                        for c in range(per_group):
                            out[c] = src[c]


@njit(cache=True, parallel=True)
def row2im(grad_rows, kernel, stride, padding, dilation, grad_x):
    """The adjoint of ``im2row`` (without the border): for every input pixel (y, x),

        grad_x[n, g·C_g + c, y, x] = Σ_{u, v} grad_rows[n, i, j, g, (u·kw + v)·C_g + c]

    over the kernel points (u, v) and output pixels (i, j) with i·s_h + u·d_h - p_h = y and
    j·s_w + v·d_w - p_w = x.  One thread per (image, input row y): for each u whose output
    row i exists, it walks that row's pixels j in order and adds each entry onto the pixel x
    it was copied from, in a channels-last scratch row (so every pixel sums its terms in a
    fixed order: u, then j), then writes the scratch row out in (C, W) order.  As in
    ``im2row``, without groups and dilation along x the kw entries of (u, j) are one run.
    """
    n_images, channels, height, width = grad_x.shape
    out_h, out_w, groups = grad_rows.shape[1], grad_rows.shape[2], grad_rows.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    per_group = channels // groups
    merged = groups == 1 and dw == 1
    for task in prange(n_images * height):
        n, y = task // height, task % height
        total = np.zeros((width, channels), grad_x.dtype)
        for u in range(kh):
            t = y + ph - u * dh
            if t < 0 or t % sh != 0 or t // sh >= out_h:
                continue
            line = grad_rows[n, t // sh]
            for j in range(out_w):
                first = j * sw - pw  # the pixel x of kernel point v = 0
                if merged:  # points v in [lo, hi) land inside the image
                    lo, hi = max(0, -first), min(kw, width - first)
                    src = line[j, 0, (u * kw + lo) * channels:]
                    for q in range(hi - lo):
                        out = total[first + lo + q]
                        for c in range(channels):
                            out[c] += src[q * channels + c]
                    continue
                for v in range(kw):
                    x = first + v * dw
                    if x < 0 or x >= width:
                        continue
                    entry, acc, k = line[j], total[x], u * kw + v
                    for g in range(groups):
                        src, out = entry[g, k * per_group:], acc[g * per_group:]
                        for c in range(per_group):
                            out[c] += src[c]
        for c in range(channels):
            out = grad_x[n, c, y]
            for x in range(width):
                out[x] = total[x, c]


# ----------------------------------------------------------------------------- host side
class _Plan:
    """Shapes, the weight as (G, O_g, K) and the chunk buffers of one convolution."""

    def __init__(self, x, weight, stride, padding, dilation, groups):
        self.batch, self.channels, height, width = x.shape
        self.out_channels, per_group, kh, kw = weight.shape
        self.groups, self.kernel = groups, (kh, kw)
        self.params = (stride, padding, dilation)
        self.out_size = output_size(x.shape[2:], (kh, kw), stride, padding, dilation)
        self.depth = kh * kw * per_group  # K: the length of each group's part of a row
        # w[g, o, (u·kw + v)·C_g + c] = weight[g·O_g + o, c, u, v]
        self.w = np.ascontiguousarray(
            weight.reshape(groups, self.out_channels // groups, per_group, kh * kw).transpose(0, 1, 3, 2)
        ).reshape(groups, self.out_channels // groups, self.depth)
        self.padded_shape = (height + 2 * padding[0], width + 2 * padding[1], self.channels)
        self.pixels = self.out_size[0] * self.out_size[1]
        # scratch values per image: its padded copy, its rows and its part of the product
        values = np.prod(self.padded_shape) + self.pixels * (groups * self.depth + self.out_channels)
        self.image_bytes = int(x.itemsize * values)
        self.chunk_bounds = equal_chunks(self.batch, self.image_bytes, CHUNK_BUFFER_BYTES)
        chunk = self.chunk_bounds[0][1]
        self.xpad = np.zeros((chunk,) + self.padded_shape, x.dtype)
        self.rows = np.empty((chunk,) + self.out_size + (groups, self.depth), x.dtype)
        self.product = np.empty((groups, chunk * self.pixels, self.out_channels // groups), x.dtype)

    def rows_of(self, x, start, stop):
        """The chunk's rows (n, H_out, W_out, G, K), made from x[start:stop]."""
        xpad, rows = self.xpad[:stop - start], self.rows[:stop - start]
        pad_channels_last(x[start:stop], self.params[1], xpad)
        im2row(xpad, self.kernel, self.params[0], self.params[2], rows)
        return rows

    def by_group(self, rows):
        """rows as (G, n·L, K): a view, one (n·L × K) matrix per group."""
        return rows.reshape(-1, self.groups, self.depth).transpose(1, 0, 2)

    def product_of(self, start, stop):
        """The chunk's (G, n·L, O_g) product buffer."""
        return self.product[:, :(stop - start) * self.pixels]

    def flat(self, a):
        """An (n, C_out, H_out, W_out) array as (n, C_out, L): a view."""
        return a.reshape(a.shape[0], self.out_channels, self.pixels)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y (B, C_out, H_out, W_out) = conv2d(x, weight) + bias; see the module docstring."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    plan = _Plan(x, weight, stride, padding, dilation, groups)
    bias = np.zeros(plan.out_channels, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    y = np.empty((plan.batch, plan.out_channels) + plan.out_size, dtype=x.dtype)
    w_t = plan.w.transpose(0, 2, 1)
    for start, stop in plan.chunk_bounds:
        rows = plan.by_group(plan.rows_of(x, start, stop))           # (G, n·L, K)
        product = plan.product_of(start, stop)                       # (G, n·L, O_g)
        matmul_rows(rows, w_t, product)
        product_to_output(product, bias, plan.flat(y[start:stop]))
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, need_grad_input=True):
    """(grad_x, grad_weight, grad_bias) of conv2d_forward; see the module docstring.

    grad_x is None when ``need_grad_input`` is false: its products are skipped.
    """
    grad_y, x, weight = (np.ascontiguousarray(a) for a in (grad_y, x, weight))
    plan = _Plan(x, weight, stride, padding, dilation, groups)
    grad_w_t = np.zeros((groups, plan.depth, plan.out_channels // groups), x.dtype)
    grad_x = np.empty_like(x) if need_grad_input else None
    for start, stop in plan.chunk_bounds:
        rows = plan.rows_of(x, start, stop)
        by_group = plan.by_group(rows)                                 # (G, n·L, K)
        grad_product = plan.product_of(start, stop)                    # (G, n·L, O_g)
        output_to_product(plan.flat(grad_y[start:stop]), grad_product)
        grad_w_t += sum_of_products(by_group, grad_product)
        if need_grad_input:
            matmul_rows(grad_product, plan.w, by_group)                # rows now hold grad_rows
            row2im(rows, plan.kernel, *plan.params, grad_x[start:stop])
    kh, kw = plan.kernel
    grad_weight = (grad_w_t.reshape(groups, kh, kw, -1, plan.out_channels // groups)
                   .transpose(0, 4, 3, 1, 2).reshape(weight.shape))
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    return grad_x, np.ascontiguousarray(grad_weight), grad_bias
