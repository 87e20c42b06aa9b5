"""DCNv3 and DCNv4 cores with numba.cuda kernels (cuda backend).

The formula and the layouts are in ``backends/reference/dcnv3.py``:

    out[n, oy, ox, g·D + c] = Σ_p m_p · x[n, :, :, g·D + c](y_p, x_p).

One thread per (image n, output pixel (oy, ox), group g), g fastest.  It walks the group's P
points; for each it computes the location, the corner, the four bilinear weights and the
modulation once (``kernel_point`` in ``formulas/dcnv3.py``, built on ``formulas/bilinear.py``,
compiled with ``for_gpu``; the numba_cpu kernels compile the same source) and reuses them
for the group's D channels, which lie next to each other in the channels-last input.

* ``_forward_kernel`` accumulates Σ_p m_p Σ_i w_i x_c(q_i) (the corner reads: ``_corner_values``) into out[n, oy, ox, g·D + c], which
  that thread alone writes.
* ``_backward_kernel`` scatters m_p w_i G_c into grad_x with ``cuda.atomic.add`` (points of
  other pixels share corners), and reduces S_i = Σ_c G_c x_c(q_i) into the point's offset
  gradient s m_p (Σ_i w_dx_i S_i, Σ_i w_dy_i S_i) and modulation gradient Σ_i w_i S_i, which
  that thread alone writes; with softmax it then turns the group's modulation gradients into
  logit gradients in place, m_p (grad_m_p - Σ_q m_q grad_m_q).

As in numba_cpu, DCNv3 and DCNv4 share the kernels: offsets and modulation are read through a
layout (og, mg, ms), offset channel g·og + 2p (dx) and the next (dy), modulation channel
g·mg + ms + p (``formulas.channel_layout``); DCNv4 passes its one offset_mask as both.  The
atomic scatter makes the last bits of grad_x depend on the order in which a real GPU runs
the threads.
"""

from __future__ import annotations

from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import bilinear as bilinear_formulas
from ..formulas import dcnv3 as formulas
from ..formulas import for_gpu

__all__ = ["dcnv3_forward", "dcnv3_backward", "dcnv4_forward", "dcnv4_backward"]

kernel_point, modulation_stats, modulation, point_gradients, corner_sum = for_gpu(
    formulas.kernel_point, formulas.modulation_stats, formulas.modulation,
    formulas.point_gradients, bilinear_formulas.corner_sum)


@cuda.jit(device=True)
def _corner_values(x, n, y0, x0, channel):
    """x[n, q_i, channel] at the four corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) of a
    channels-last image; a corner outside the image reads 0 (zero padding)."""
    top, bottom = 0 <= y0 < x.shape[1], 0 <= y0 + 1 < x.shape[1]
    left, right = 0 <= x0 < x.shape[2], 0 <= x0 + 1 < x.shape[2]
    return (x[n, y0, x0, channel] if top and left else 0.0,
            x[n, y0, x0 + 1, channel] if top and right else 0.0,
            x[n, y0 + 1, x0, channel] if bottom and left else 0.0,
            x[n, y0 + 1, x0 + 1, channel] if bottom and right else 0.0)


@cuda.jit
def _forward_kernel(x, offset, mask, layout, softmax, geometry, scale, group, remove_center, out):
    """out[n, oy, ox, g·D + c] = Σ_p m_p Σ_i w_i x[n, q_i, g·D + c]; one thread per (n, oy, ox, g)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[1], out.shape[2]
    kh, kw = geometry[0], geometry[1]
    points = kh * kw - (1 if remove_center else 0)
    per_group = channels // group
    og, mg, ms = layout
    for t in range(cuda.grid(1), out.shape[0] * out_h * out_w * group, cuda.gridsize(1)):
        g, pixel = t % group, t // group
        ox, oy, n = pixel % out_w, (pixel // out_w) % out_h, pixel // (out_w * out_h)
        first = g * per_group
        for c in range(per_group):
            out[n, oy, ox, first + c] = 0.0
        offsets, logits = offset[n, oy, ox, g * og:], mask[n, oy, ox, g * mg + ms:]
        top, total = modulation_stats(logits, points, softmax)
        for p in range(points):
            inside, y0, x0, w, _, _, m = kernel_point(p, oy, ox, offsets, logits, geometry, scale,
                                                      remove_center, height, width, softmax, top,
                                                      total)
            if not inside:  # skip the reads: 0 · inf would be NaN
                continue
            for c in range(per_group):
                out[n, oy, ox, first + c] += m * corner_sum(w, _corner_values(x, n, y0, x0, first + c))


@cuda.jit
def _backward_kernel(x, offset, mask, layout, softmax, geometry, scale, group, remove_center,
                     grad_out, grad_x, grad_offset, grad_mask):
    """Scatter into grad_x (atomics); offset and modulation gradients per point, one thread per
    (n, oy, ox, g).  grad_x must start at zero."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    kh, kw = geometry[0], geometry[1]
    points = kh * kw - (1 if remove_center else 0)
    per_group = channels // group
    og, mg, ms = layout
    for t in range(cuda.grid(1), grad_out.shape[0] * out_h * out_w * group, cuda.gridsize(1)):
        g, pixel = t % group, t // group
        ox, oy, n = pixel % out_w, (pixel // out_w) % out_h, pixel // (out_w * out_h)
        first = g * per_group
        offsets, logits = offset[n, oy, ox, g * og:], mask[n, oy, ox, g * mg + ms:]
        grad_offsets = grad_offset[n, oy, ox, g * og:]
        grad_logits = grad_mask[n, oy, ox, g * mg + ms:]
        top, total = modulation_stats(logits, points, softmax)
        for p in range(points):
            inside, y0, x0, w, w_dy, w_dx, m = kernel_point(p, oy, ox, offsets, logits, geometry,
                                                            scale, remove_center, height, width,
                                                            softmax, top, total)
            s = (0.0, 0.0, 0.0, 0.0)
            if inside:
                for c in range(per_group):
                    grad = grad_out[n, oy, ox, first + c]
                    v = _corner_values(x, n, y0, x0, first + c)
                    s = (s[0] + grad * v[0], s[1] + grad * v[1], s[2] + grad * v[2], s[3] + grad * v[3])
                    for k in range(4):  # corner k is (y0 + k // 2, x0 + k % 2); atomics: see cuda/bilinear.py
                        qy, qx = y0 + k // 2, x0 + k % 2
                        if 0 <= qy < height and 0 <= qx < width:
                            cuda.atomic.add(grad_x, (n, qy, qx, first + c), m * w[k] * grad)
            point_gradients(p, s, m, w, w_dy, w_dx, scale, grad_offsets, grad_logits)
        if softmax:  # logit gradients: m_p (grad_m_p - Σ_q m_q grad_m_q)
            dot = 0.0
            for p in range(points):
                dot += modulation(logits[p], softmax, top, total) * grad_logits[p]
            for p in range(points):
                grad_logits[p] = modulation(logits[p], softmax, top, total) * (grad_logits[p] - dot)


def _tasks(x, out_size, group):
    """How many threads: N · H_out · W_out · G."""
    return x.shape[0] * out_size[0] * out_size[1] * group


def _run_forward(x, offset, mask, packed, softmax, kernel_size, stride, padding, dilation, group,
                 offset_scale, remove_center):
    """The forward kernel over (x, offset, mask), or over (x, offset_mask, offset_mask) when
    ``packed`` (DCNv4): ``formulas.channel_layout`` says where each point's channels are."""
    geometry = (*kernel_size, *stride, *padding, *dilation)
    out_size = offset.shape[1:3]
    out = CudaArray.empty((x.shape[0], *out_size, x.shape[3]), x.dtype)
    _forward_kernel[grid_for(_tasks(x, out_size, group))](
        x.dev, offset.dev, mask.dev, formulas.channel_layout(kernel_size, remove_center, packed),
        bool(softmax), geometry, float(offset_scale), group, bool(remove_center), out.dev)
    return out


def _run_backward(grad_out, x, offset, mask, packed, softmax, kernel_size, stride, padding,
                  dilation, group, offset_scale, remove_center):
    """(grad_x, grad_offset, grad_mask) from the backward kernel; when ``packed`` (DCNv4) the
    two are one zeroed array, so its padding channels (from G·3P on) keep gradient 0."""
    geometry = (*kernel_size, *stride, *padding, *dilation)
    grad_x = CudaArray.zeros(x.shape, x.dtype)
    grad_offset = (CudaArray.zeros if packed else CudaArray.empty)(offset.shape, x.dtype)
    grad_mask = grad_offset if packed else CudaArray.empty(mask.shape, x.dtype)
    _backward_kernel[grid_for(_tasks(x, offset.shape[1:3], group))](
        x.dev, offset.dev, mask.dev, formulas.channel_layout(kernel_size, remove_center, packed),
        bool(softmax), geometry, float(offset_scale), group, bool(remove_center), grad_out.dev,
        grad_x.dev, grad_offset.dev, grad_mask.dev)
    return grad_x, grad_offset, grad_mask


def dcnv3_forward(x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center):
    """out (N, H_out, W_out, G·D) = Σ_p m_p x(y_p, x_p) per group (see the module docstring)."""
    return _run_forward(x, offset, mask, False, False, kernel_size, stride, padding, dilation,
                        group, offset_scale, remove_center)


def dcnv3_backward(grad_out, x, offset, mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center):
    """(grad_x, grad_offset, grad_mask) of L = Σ grad_out · out."""
    return _run_backward(grad_out, x, offset, mask, False, False, kernel_size, stride, padding,
                         dilation, group, offset_scale, remove_center)


def dcnv4_forward(x, offset_mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center, softmax):
    """DCNv3's sum, offsets and modulation read from offset_mask's 3P-channel group blocks."""
    return _run_forward(x, offset_mask, offset_mask, True, softmax, kernel_size, stride, padding,
                        dilation, group, offset_scale, remove_center)


def dcnv4_backward(grad_out, x, offset_mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center, softmax):
    """(grad_x, grad_offset_mask); the padding channels from G·3P on get 0."""
    grad_x, grad_offset_mask, _ = _run_backward(grad_out, x, offset_mask, offset_mask, True,
                                                softmax, kernel_size, stride, padding, dilation,
                                                group, offset_scale, remove_center)
    return grad_x, grad_offset_mask
