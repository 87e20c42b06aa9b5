"""DCNv3 and DCNv4 cores with Numba loops (numba_cpu backend).

The formula and the layouts are in ``backends/reference/dcnv3.py``:

    out[n, oy, ox, g·D + c] = Σ_p m_p · x[n, :, :, g·D + c](y_p, x_p),

point p of group g read by bilinear sampling at the location its (dx, dy) offset gives.

What makes it fast (the op is a gather of 4·D values per point with nothing to multiply by,
so the work per point outside the channel loop decides the speed):

* **Channels-last, padded, flat.**  The input is copied once into (N, H+2, W+2, C) with a
  zero border one pixel wide (the zero padding of bilinear sampling, so no bounds checks),
  and each picture is read as one flat run of (H+2)·(W+2)·C values: a corner of a point is
  one index b, its group's D channels the run b .. b+D-1, the other three corners b + C,
  b + row, b + row + C.  The loops over c read and write unit-stride runs, which numba
  compiles to vector instructions.
* **A plan per point, computed once.**  The location, the corner, the four bilinear weights,
  their slopes and the modulation depend on (image, output pixel, group, point), not on the
  channel: ``_plan`` computes them for a group's P points (the formula ``kernel_point`` in
  ``formulas/dcnv3.py``, built on ``formulas/bilinear.py``) into small per-thread arrays,
  then the channel loops run over them.  The backward pass computes the plan once per point and uses
  it for both the scatter into grad_x and the offset and modulation gradients.
* **One loop per written array.**  The scatter adds m·w_i·G_c to four corners.  Written as
  one loop over c with four stores, the backward took 8 ms more (of 68) than with four loops
  of one store each (``_scatter``): LLVM vectorises a loop only after checking at run time
  that the runs it writes overlap nothing it reads, and it gives up past eight such checks.
  The corner dot products S_i write nothing but their sums (``_corner_dots``).
* **fastmath only on the sums.**  ``_corner_dots`` carries the REORDER licences
  (``floating.py``): its four sums keep partial sums in vector registers, in the data's
  precision.  Everything else, the plan above all, is compiled without them, so a location
  is rounded identically in both passes and in the reference, and lands on the same side of
  a pixel-integer position (where the position gradient is one-sided).
* **No scratch columns.**  There is no weight to multiply, so no im2col: each output value is
  summed in place over the P points.
* **DCNv3 and DCNv4 are one loop.**  The kernels read offsets and modulation through a
  layout (offset channel g·og + 2p for dx and the next for dy, modulation channel
  g·mg + ms + p; ``formulas.channel_layout``): (2P, P, 0) over DCNv3's two tensors,
  (3P, 3P, 2P) over DCNv4's single offset_mask, passed as both; DCNv4's backward writes
  both gradients into one zeroed array, so its padding channels (from G·3P on) keep
  gradient 0.

Measured (N=8, 56×56, G=4, D=16, 3×3, float32, CPU time of one thread, on the shared
2-core machine with load average 10-25, so only the ratio means much): forward 24 -> 19 ms,
backward 61 -> 40 ms against the previous version, which wrote the four corners in one
loop, summed the dot products in float64 and computed the backward's locations under
fastmath.  What is left is mostly the plan itself, about 13 ns of scalar work per point; it
does not vectorise across points (the plan writes a dozen small arrays: too many run-time
overlap checks again).

Threads and determinism.  The forward pass gives each thread whole output rows (image n,
row oy): it alone writes out[n, oy].  The backward pass scatters into grad_x, so a thread
owns an (image, group): grad_x[n, :, :, g·D:(g+1)·D] and the group's offset and modulation
gradients are written by that thread alone.  Every sum runs in an order fixed at compile
time, so the results are bitwise the same for any number of threads.  The price: backward
has N·G tasks, so one image with one group runs on one thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import dcnv3 as formulas
from ..formulas import for_cpu
from .floating import REORDER

__all__ = ["dcnv3_forward", "dcnv3_backward", "dcnv4_forward", "dcnv4_backward"]

kernel_point, modulation_stats, point_gradients = for_cpu(
    formulas.kernel_point, formulas.modulation_stats, formulas.point_gradients)


@njit(cache=True, inline="always")
def _plan(offsets, modulation, oy, ox, g, layout, softmax, geometry, scale, remove_center,
          height, width, channels, corner, w, w_dy, w_dx, m, slopes):
    """The sampling of group g's P points at output pixel (oy, ox), for the channel loops.

    Fills, per point p: ``corner[p]``, the flat index (in the padded image of one picture,
    (H+2)·(W+2)·C values) of channel g·D of its top-left neighbour (y0, x0), or -1 outside
    the band; ``w[p]``, ``w_dy[p]``, ``w_dx[p]``, the four bilinear weights and their
    slopes (the slopes only with ``slopes``: the backward's); ``m[p]``, its modulation
    scalar; all but ``corner`` from the formula ``kernel_point`` (``formulas/dcnv3.py``, the
    cuda kernels' too).  Inlined into both passes, neither of which is compiled with
    fastmath: the locations, and so the side of a pixel-integer position a point falls on,
    are rounded exactly as in the reference.
    """
    og, mg, ms = layout
    points = corner.shape[0]
    row = (width + 2) * channels
    offsets, logits = offsets[g * og:], modulation[g * mg + ms:]
    top, total = modulation_stats(logits, points, softmax)
    for p in range(points):
        inside, y0, x0, wp, wy, wx, mp = kernel_point(p, oy, ox, offsets, logits, geometry, scale,
                                                      remove_center, height, width, softmax, top,
                                                      total)
        m[p] = mp
        corner[p] = (y0 + 1) * row + (x0 + 1) * channels if inside else -1
        for k in range(4):
            w[p, k] = wp[k]
        if slopes:  # the backward's; the forward leaves w_dy, w_dx unwritten
            for k in range(4):
                w_dy[p, k], w_dx[p, k] = wy[k], wx[k]


@njit(cache=True, parallel=True)
def _forward(xpad, offset, mask, layout, softmax, geometry, scale, group, remove_center, out):
    """out[n, oy, ox, g·D + c] = Σ_p Σ_i (m_p w_i) · xpad[n, q_i + 1, g·D + c]; one thread per
    output row (n, oy).  ``layout`` = (og, mg, ms): see the module docstring."""
    height, width, channels = xpad.shape[1] - 2, xpad.shape[2] - 2, xpad.shape[3]
    out_h, out_w = out.shape[1], out.shape[2]
    points = geometry[0] * geometry[1] - (1 if remove_center else 0)
    per_group = channels // group
    row = (width + 2) * channels
    cast = out.dtype.type  # weights in the data's precision: float32 data stays float32
    for task in prange(out.shape[0] * out_h):
        n, oy = task // out_h, task % out_h
        image = xpad[n].reshape(-1)
        corner = np.empty(points, np.int64)
        w, w_dy, w_dx = np.empty((points, 4)), np.empty((points, 4)), np.empty((points, 4))
        m = np.empty(points)
        for ox in range(out_w):
            offsets, modulation, pixel = offset[n, oy, ox], mask[n, oy, ox], out[n, oy, ox]
            pixel[:] = 0.0
            for g in range(group):
                _plan(offsets, modulation, oy, ox, g, layout, softmax, geometry, scale,
                      remove_center, height, width, channels, corner, w, w_dy, w_dx, m, False)
                acc = pixel[g * per_group:(g + 1) * per_group]
                for p in range(points):
                    if corner[p] < 0:  # skip the reads: 0 · inf would be NaN
                        continue
                    b = corner[p] + g * per_group
                    w00, w01 = cast(m[p] * w[p, 0]), cast(m[p] * w[p, 1])
                    w10, w11 = cast(m[p] * w[p, 2]), cast(m[p] * w[p, 3])
                    v00, v01 = image[b:b + per_group], image[b + channels:b + channels + per_group]
                    v10, v11 = image[b + row:b + row + per_group], image[b + row + channels:b + row + channels + per_group]
                    for c in range(per_group):
                        acc[c] += w00 * v00[c] + w01 * v01[c] + w10 * v10[c] + w11 * v11[c]


@njit(cache=True, parallel=True)
def _backward(xpad, offset, mask, layout, softmax, geometry, scale, group, remove_center,
              grad_out, grad_xpad, grad_offset, grad_mask):
    """The adjoint of ``_forward``; one thread per (image n, group g).

    For point p of output pixel (oy, ox), with weights w_i (slopes w_dy_i, w_dx_i) of its
    corners q_i, modulation m and G_c = grad_out[n, oy, ox, g·D + c]:

        grad_xpad[n, q_i + 1, g·D + c] += m w_i G_c                (the scatter)
        S_i = Σ_c G_c x_c(q_i)                                    (the gradient reaching corner i)
        grad_offset[dx of (g, p)] = s m Σ_i w_dx_i S_i,  [dy of (g, p)] = s m Σ_i w_dy_i S_i
                                  (0 where the sum is 0, even if s m overflows: offset_gradient)
        grad_mask[(g, p)]         = Σ_i w_i S_i

    then, with softmax, grad_mask[(g, p)] <- m_p (grad_mask[(g, p)] - Σ_q m_q grad_mask[(g, q)])
    in place.  grad_xpad must start at zero.  The sums S_i are in the data's precision,
    vectorised under the REORDER licences, in an order fixed at compile time (see
    ``floating.py``).
    """
    height, width, channels = xpad.shape[1] - 2, xpad.shape[2] - 2, xpad.shape[3]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    points = geometry[0] * geometry[1] - (1 if remove_center else 0)
    per_group = channels // group
    row = (width + 2) * channels
    og, mg, ms = layout
    cast = xpad.dtype.type
    for task in prange(grad_out.shape[0] * group):
        n, g = task // group, task % group
        image, grad_image = xpad[n].reshape(-1), grad_xpad[n].reshape(-1)
        first_offset, first_mask = g * og, g * mg + ms
        corner = np.empty(points, np.int64)
        w, w_dy, w_dx = np.empty((points, 4)), np.empty((points, 4)), np.empty((points, 4))
        m = np.empty(points)
        for oy in range(out_h):
            for ox in range(out_w):
                offsets, modulation = offset[n, oy, ox], mask[n, oy, ox]
                grad = grad_out[n, oy, ox, g * per_group:(g + 1) * per_group]
                grad_offsets = grad_offset[n, oy, ox, first_offset:]
                grad_logits = grad_mask[n, oy, ox, first_mask:]
                _plan(offsets, modulation, oy, ox, g, layout, softmax, geometry, scale,
                      remove_center, height, width, channels, corner, w, w_dy, w_dx, m, True)
                for p in range(points):
                    s = (0.0, 0.0, 0.0, 0.0)
                    if corner[p] >= 0:
                        b = corner[p] + g * per_group
                        s = _corner_dots(grad, image, b, channels, row)
                        _scatter(grad, grad_image, b, channels, row, cast(m[p] * w[p, 0]),
                                 cast(m[p] * w[p, 1]), cast(m[p] * w[p, 2]), cast(m[p] * w[p, 3]))
                    point_gradients(p, s, m[p], w[p], w_dy[p], w_dx[p], scale, grad_offsets,
                                    grad_logits)
                if softmax:
                    dot = 0.0
                    for p in range(points):
                        dot += m[p] * grad_logits[p]
                    for p in range(points):
                        grad_logits[p] = m[p] * (grad_logits[p] - dot)


@njit(cache=True, fastmath=REORDER)
def _corner_dots(grad, image, b, channels, row):
    """(S_0, S_1, S_2, S_3): S_i = Σ_c grad[c] image[b_i + c] over the four corners
    b_0 = b, b_1 = b + C, b_2 = b + row, b_3 = b + row + C; sums in the data's precision."""
    d = grad.shape[0]
    v00, v01 = image[b:b + d], image[b + channels:b + channels + d]
    v10, v11 = image[b + row:b + row + d], image[b + row + channels:b + row + channels + d]
    s00 = s01 = s10 = s11 = image.dtype.type(0.0)
    for c in range(d):
        s00 += grad[c] * v00[c]
        s01 += grad[c] * v01[c]
        s10 += grad[c] * v10[c]
        s11 += grad[c] * v11[c]
    return s00, s01, s10, s11


@njit(cache=True, inline="always")
def _scatter(grad, grad_image, b, channels, row, g00, g01, g10, g11):
    """grad_image[b_i + c] += g_i grad[c] for the four corners b_i (as in ``_corner_dots``):
    one loop per corner, so that each loop has one array to write and vectorises (a loop
    writing four arrays needs more run-time overlap checks than LLVM will emit)."""
    d = grad.shape[0]
    a = grad_image[b:b + d]
    for c in range(d):
        a[c] += g00 * grad[c]
    a = grad_image[b + channels:b + channels + d]
    for c in range(d):
        a[c] += g01 * grad[c]
    a = grad_image[b + row:b + row + d]
    for c in range(d):
        a[c] += g10 * grad[c]
    a = grad_image[b + row + channels:b + row + channels + d]
    for c in range(d):
        a[c] += g11 * grad[c]


# ----------------------------------------------------------------------------- host side
def _padded(x):
    """x (N, H, W, C) inside a zero border one pixel wide: (N, H+2, W+2, C)."""
    xpad = np.zeros((x.shape[0], x.shape[1] + 2, x.shape[2] + 2, x.shape[3]), x.dtype)
    xpad[:, 1:-1, 1:-1] = x
    return xpad


def _run_forward(x, offset, mask, packed, softmax, kernel_size, stride, padding, dilation, group,
                 offset_scale, remove_center):
    """The forward kernel over (x, offset, mask), or over (x, offset_mask, offset_mask) when
    ``packed`` (DCNv4): ``formulas.channel_layout`` says where each point's channels are."""
    geometry = (*kernel_size, *stride, *padding, *dilation)
    out = np.empty((x.shape[0], *offset.shape[1:3], x.shape[3]), x.dtype)
    _forward(_padded(x), offset, mask, formulas.channel_layout(kernel_size, remove_center, packed),
             softmax, geometry, float(offset_scale), group, bool(remove_center), out)
    return out


def _run_backward(grad_out, x, offset, mask, packed, softmax, kernel_size, stride, padding,
                  dilation, group, offset_scale, remove_center):
    """(grad_x, grad_offset, grad_mask) from the backward kernel; when ``packed`` (DCNv4) the
    two are one zeroed array, so its padding channels (from G·3P on) keep gradient 0."""
    geometry = (*kernel_size, *stride, *padding, *dilation)
    grad_xpad = np.zeros((x.shape[0], x.shape[1] + 2, x.shape[2] + 2, x.shape[3]), x.dtype)
    grad_offset = np.zeros_like(offset) if packed else np.empty_like(offset)
    grad_mask = grad_offset if packed else np.empty_like(mask)
    _backward(_padded(x), offset, mask, formulas.channel_layout(kernel_size, remove_center, packed),
              softmax, geometry, float(offset_scale), group, bool(remove_center),
              np.ascontiguousarray(grad_out, dtype=x.dtype), grad_xpad, grad_offset, grad_mask)
    return np.ascontiguousarray(grad_xpad[:, 1:-1, 1:-1]), grad_offset, grad_mask


def dcnv3_forward(x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center):
    """out (N, H_out, W_out, G·D) = Σ_p m_p x(y_p, x_p) per group (see the module docstring)."""
    x, offset, mask = (np.ascontiguousarray(a) for a in (x, offset, mask))
    return _run_forward(x, offset, mask, False, False, kernel_size, stride, padding, dilation,
                        group, offset_scale, remove_center)


def dcnv3_backward(grad_out, x, offset, mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center):
    """(grad_x, grad_offset, grad_mask) of L = Σ grad_out · out."""
    x, offset, mask = (np.ascontiguousarray(a) for a in (x, offset, mask))
    return _run_backward(grad_out, x, offset, mask, False, False, kernel_size, stride, padding,
                         dilation, group, offset_scale, remove_center)


def dcnv4_forward(x, offset_mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center, softmax):
    """DCNv3's sum, offsets and modulation read from offset_mask's 3P-channel group blocks."""
    x, offset_mask = np.ascontiguousarray(x), np.ascontiguousarray(offset_mask)
    return _run_forward(x, offset_mask, offset_mask, True, bool(softmax), kernel_size, stride,
                        padding, dilation, group, offset_scale, remove_center)


def dcnv4_backward(grad_out, x, offset_mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center, softmax):
    """(grad_x, grad_offset_mask); the padding channels from G·3P on get 0."""
    x, offset_mask = np.ascontiguousarray(x), np.ascontiguousarray(offset_mask)
    grad_x, grad_offset_mask, _ = _run_backward(grad_out, x, offset_mask, offset_mask, True,
                                                bool(softmax), kernel_size, stride, padding,
                                                dilation, group, offset_scale, remove_center)
    return grad_x, grad_offset_mask
