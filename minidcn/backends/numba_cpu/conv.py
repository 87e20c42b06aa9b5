"""2-D convolution as kh·kw shifted matrix products (numba backend).

The formula is the one in ``backends/reference/conv.py`` (read its docstring first).  The
reference lowers it to ONE matrix product by copying every input pixel kh·kw times into a
column buffer (im2col).  That buffer is 9x the input for a 3x3 kernel, and for a wide layer
writing it, then reading it back, costs more time than the product itself on a small
machine.  Here the sum over the kernel points stays a sum of kh·kw products, each reading
the input in place:

    y[:, g] = Σ_{u, v}  w[g, :, :, u, v] (O_g × C_g)  @  (the input, shifted by (u, v)) (C_g × N)

**Shifted views.**  Lay the zero-padded images of a chunk end to end, one channel per row:
``flat[c, (n·H_p + r)·W_p + q] = x_pad[n, c, r, q]``.  For stride 1, output pixel (i, j) of
image n reads padded pixel (i + u·d_h, j + v·d_w) for kernel point (u, v), and in ``flat``
that is the entry ``u·d_h·W_p + v·d_w`` places after position (n, i, j).  So the operand of
kernel point (u, v) is the slice ``flat[:, shift : shift + N]``: a view, no copy.  The
product is computed at every position of the padded grid; positions that are not an output
pixel (the last rows and columns of each image, where the window would run off the image)
are computed and thrown away, which costs (H_p W_p) / (H_out W_out) - 1 more work (13% for
32×32 with padding 1).

**Strides.**  With stride s, output pixel i reads padded row i·s + u·d, which is row
i + (u·d) // s of the *phase image* made of the rows ≡ (u·d) mod s.  So the padded input is
split into s_h × s_w phase images (``phases[a, b]`` holds the padded pixels (r, q) with
r ≡ a mod s_h, q ≡ b mod s_w) on a grid of H_g × W_g positions; kernel point (u, v) reads phase
((u·d_h) mod s_h, (v·d_w) mod s_w), shifted by ((u·d_h) // s_h, (v·d_w) // s_w) grid
positions.  For stride 1 there is one phase, the padded input itself.

Backward runs the same products the other way round, with grad_y laid on the same grid
(zero at the positions that are not output pixels, so they contribute nothing):

    grad_w[g, :, :, u, v] = Σ_chunks  grad_y_grid[g] (O_g × N) @ (shifted view)ᵀ (N × C_g)
    grad_phases[g] (shifted by (u, v)) += w[g, :, :, u, v]ᵀ (C_g × O_g) @ grad_y_grid[g]

and grad_x is read back from grad_phases (a padded pixel is in exactly one phase).

* The products go to BLAS through ``np.matmul`` (one batched call over the groups).  Each
  has only C_g terms per sum, so for narrow layers (a few channels per group) BLAS runs
  them far below its peak, and the one large im2col product of the reference is faster
  (lesson 02 times both: 2.4 ms against 1.9 ms at 8×16→32 channels, 32×32; 9.3 against
  12.0 ms at 8×64→64).
* Moving data between the (B, C, H, W) layout and the grid (``pack_phases``,
  ``unpack_phases``, ``grid_to_output``, ``output_to_grid``) is done by ``@njit`` loops.
  They are serial on purpose.  Each takes a fraction of a millisecond, and a parallel loop
  would leave numba's worker threads spinning (waiting for the next parallel loop) just
  when BLAS needs both cores for the products: on 2 cores, parallel copies made the
  forward of the benchmark shape 17 ms instead of 6.5 ms.  Nothing here depends on the
  number of numba threads, so the results are bitwise reproducible.
* Images are processed in chunks whose scratch buffers fit in ``CHUNK_BUFFER_BYTES``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..reference.conv import output_size
from .chunks import equal_chunks

__all__ = ["conv2d_forward", "conv2d_backward"]

CHUNK_BUFFER_BYTES = 32 << 20  # the scratch buffers of one chunk of images stay below 32 MiB


class _Grid:
    """The phase grid of a convolution: sizes, and where each kernel point reads.

    ``height`` × ``width`` grid positions per image, H_g = H_out + ((kh - 1) d_h) // s_h (the
    output rows plus the farthest shift), and likewise W_g.  ``margin`` zero positions
    after the last image keep the farthest shifted view inside the buffer.
    """

    def __init__(self, x_shape, weight_shape, stride, padding, dilation, groups):
        self.batch, self.channels = x_shape[:2]
        self.out_channels, _, kh, kw = weight_shape
        self.groups = groups
        self.stride, self.padding = stride, padding
        self.out_size = output_size(x_shape[2:], (kh, kw), stride, padding, dilation)
        (sh, sw), (dh, dw) = stride, dilation
        self.height = self.out_size[0] + (kh - 1) * dh // sh
        self.width = self.out_size[1] + (kw - 1) * dw // sw
        self.margin = ((kh - 1) * dh // sh) * self.width + (kw - 1) * dw // sw
        # kernel point (u, v) -> (phase a, phase b, shift in flat positions)
        self.reads = {(u, v): ((u * dh) % sh, (v * dw) % sw,
                               (u * dh) // sh * self.width + (v * dw) // sw)
                      for u in range(kh) for v in range(kw)}

    def positions(self, n_images):
        """N: the grid positions of n images, the columns of every product."""
        return n_images * self.height * self.width

    def image_bytes(self, itemsize, backward):
        """Scratch bytes per image: the phases and the (O × N) product buffers, and in
        backward the gradient of the phases and its product buffer as well."""
        phases = self.stride[0] * self.stride[1] * self.channels
        per_position = phases + 2 * self.out_channels
        if backward:
            per_position += phases + self.channels
        return itemsize * per_position * self.height * self.width

    def phase_views(self, phases, u, v, n_positions):
        """The (G, C_g, N) operand of kernel point (u, v): a shifted view of its phase."""
        a, b, shift = self.reads[u, v]
        return phases[a, b].reshape(self.groups, self.channels // self.groups, -1)[
            :, :, shift:shift + n_positions]

    def chunks(self, itemsize, backward):
        return equal_chunks(self.batch, self.image_bytes(itemsize, backward), CHUNK_BUFFER_BYTES)


# ----------------------------------------------------------------------------- kernels
@njit(cache=True)
def pack_phases(x, stride, padding, grid_h, grid_w, phases):
    """phases[a, b, c, (n·H_g + r)·W_g + q] = x[n, c, r·s_h + a - p_h, q·s_w + b - p_w], 0 outside.

    x: (n, C, H, W); phases: (s_h, s_w, C, n·H_g·W_g + margin), margin included (zeroed).
    """
    n_images, channels, height, width = x.shape
    sh, sw = stride
    ph, pw = padding
    used = n_images * grid_h * grid_w
    for a in range(sh):
        for b in range(sw):
            for c in range(channels):
                row = phases[a, b, c]
                for n in range(n_images):
                    for r in range(grid_h):
                        y = r * sh + a - ph
                        start = (n * grid_h + r) * grid_w
                        if y < 0 or y >= height:
                            row[start:start + grid_w] = 0
                            continue
                        for q in range(grid_w):
                            col = q * sw + b - pw
                            row[start + q] = x[n, c, y, col] if 0 <= col < width else 0
                row[used:] = 0


@njit(cache=True)
def unpack_phases(grad_phases, stride, padding, grid_h, grid_w, grad_x):
    """The adjoint of ``pack_phases``: each pixel of grad_x takes the value of the one grid
    position that holds it, and 0 if none does (a pixel past the last window).

    The loops mirror ``pack_phases`` (grid position -> pixel), so no division is needed.
    """
    n_images, channels, height, width = grad_x.shape
    sh, sw = stride
    ph, pw = padding
    grad_x[...] = 0
    for n in range(n_images):
        for c in range(channels):
            for a in range(sh):
                for b in range(sw):
                    row = grad_phases[a, b, c]
                    for r in range(grid_h):
                        y = r * sh + a - ph
                        if y < 0 or y >= height:
                            continue
                        start = (n * grid_h + r) * grid_w
                        for q in range(grid_w):
                            col = q * sw + b - pw
                            if 0 <= col < width:
                                grad_x[n, c, y, col] = row[start + q]


@njit(cache=True)
def grid_to_output(grid, grid_h, grid_w, bias, y):
    """y[n, o, i, j] = grid[o, (n·H_g + i)·W_g + j] + bias[o]: keep the output pixels of the
    (O, N) product."""
    n_images, out_channels, out_h, out_w = y.shape
    for n in range(n_images):
        for o in range(out_channels):
            for i in range(out_h):
                start = (n * grid_h + i) * grid_w
                row, out = grid[o, start:start + out_w], y[n, o, i]
                for j in range(out_w):
                    out[j] = row[j] + bias[o]


@njit(cache=True)
def output_to_grid(grad_y, grid_h, grid_w, grid):
    """The adjoint of ``grid_to_output`` (without the bias): grad_y on the grid, 0 at the
    positions that are not output pixels.  grid: (O, n·H_g·W_g)."""
    n_images, out_channels, out_h, out_w = grad_y.shape
    for n in range(n_images):
        for o in range(out_channels):
            for i in range(grid_h):
                start = (n * grid_h + i) * grid_w
                row = grid[o, start:start + grid_w]
                for j in range(grid_w):
                    row[j] = grad_y[n, o, i, j] if i < out_h and j < out_w else 0


# ----------------------------------------------------------------------------- host side
def _shortest_stride(x_shape, weight_shape, stride, padding, dilation):
    """The stride, cut to n + 2p - span + 1 where it is longer: an axis with one output
    (i = 0 only) gives the same numbers for any stride that long, and the cut keeps the
    s_h × s_w phase images (most of them never read) within the padded input's size."""
    return tuple(min(s, n + 2 * p - (d * (k - 1) + 1) + 1) for n, k, s, p, d in
                 zip(x_shape[2:], weight_shape[2:], stride, padding, dilation))


def _weights_by_point(weight, groups):
    """w as (kh, kw, G, O_g, C_g): the (O_g × C_g) matrix of each kernel point and group."""
    c_out, c_per_group = weight.shape[:2]
    return np.ascontiguousarray(
        weight.reshape(groups, c_out // groups, c_per_group, *weight.shape[2:]).transpose(3, 4, 0, 1, 2))


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y (B, C_out, H_out, W_out) = conv2d(x, weight) + bias; see the module docstring."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    stride = _shortest_stride(x.shape, weight.shape, stride, padding, dilation)
    grid = _Grid(x.shape, weight.shape, stride, padding, dilation, groups)
    w = _weights_by_point(weight, groups)
    bias = np.zeros(grid.out_channels, x.dtype) if bias is None else np.ascontiguousarray(bias)
    y = np.empty((grid.batch, grid.out_channels) + grid.out_size, dtype=x.dtype)
    chunks = grid.chunks(x.itemsize, backward=False)
    chunk = chunks[0][1]
    phases = np.empty(stride + (grid.channels, grid.positions(chunk) + grid.margin), x.dtype)
    total = np.empty((groups, grid.out_channels // groups, grid.positions(chunk)), x.dtype)
    term = np.empty_like(total)
    for start, stop in chunks:
        n = grid.positions(stop - start)
        pack_phases(x[start:stop], stride, padding, grid.height, grid.width,
                    phases[..., :n + grid.margin])
        out, scratch = total[..., :n], term[..., :n]
        for k, (u, v) in enumerate(grid.reads):
            np.matmul(w[u, v], grid.phase_views(phases[..., :n + grid.margin], u, v, n),
                      out=out if k == 0 else scratch)
            if k:
                out += scratch
        grid_to_output(out.reshape(grid.out_channels, n), grid.height, grid.width, bias, y[start:stop])
    return y


def _phase_gradients(grid, w_t, gy, grad_phases, scratch):
    """grad_phases = Σ_{u, v} (shifted by (u, v)) w[g, :, :, u, v]ᵀ @ grad_y_grid[g]."""
    grad_phases.fill(0)
    for u, v in grid.reads:
        np.matmul(w_t[u, v], gy, out=scratch)
        grid.phase_views(grad_phases, u, v, scratch.shape[-1])[...] += scratch


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, need_grad_input=True):
    """(grad_x, grad_weight, grad_bias) of conv2d_forward; see the module docstring.

    grad_x is None when ``need_grad_input`` is false: its products are skipped.
    """
    grad_y, x, weight = (np.ascontiguousarray(a) for a in (grad_y, x, weight))
    stride = _shortest_stride(x.shape, weight.shape, stride, padding, dilation)
    grid = _Grid(x.shape, weight.shape, stride, padding, dilation, groups)
    w = _weights_by_point(weight, groups)    # (kh, kw, G, O_g, C_g)
    w_t = w.transpose(0, 1, 2, 4, 3)         # (kh, kw, G, C_g, O_g)
    grad_w = np.zeros_like(w)
    chunks = grid.chunks(x.itemsize, backward=True)
    chunk_positions = grid.positions(chunks[0][1])
    phases = np.empty(stride + (grid.channels, chunk_positions + grid.margin), x.dtype)
    grad_grid = np.empty((grid.out_channels, chunk_positions), x.dtype)
    if need_grad_input:
        grad_x = np.empty_like(x)
        grad_phases = np.empty_like(phases)
        scratch = np.empty((groups, grid.channels // groups, chunk_positions), x.dtype)
    for start, stop in chunks:
        n = grid.positions(stop - start)
        chunk_phases = phases[..., :n + grid.margin]
        pack_phases(x[start:stop], stride, padding, grid.height, grid.width, chunk_phases)
        output_to_grid(grad_y[start:stop], grid.height, grid.width, grad_grid[:, :n])
        gy = grad_grid[:, :n].reshape(groups, grid.out_channels // groups, n)  # (G, O_g, N)
        for u, v in grid.reads:
            grad_w[u, v] += np.matmul(gy, grid.phase_views(chunk_phases, u, v, n).transpose(0, 2, 1))
        if need_grad_input:
            chunk_grad_phases = grad_phases[..., :n + grid.margin]
            _phase_gradients(grid, w_t, gy, chunk_grad_phases, scratch[..., :n])
            unpack_phases(chunk_grad_phases, stride, padding, grid.height, grid.width, grad_x[start:stop])
    grad_weight = np.ascontiguousarray(grad_w.transpose(2, 3, 4, 0, 1)).reshape(weight.shape)
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    return (grad_x if need_grad_input else None), grad_weight, grad_bias
