"""DCNv3 and DCNv4 cores, written as the formula (reference backend).

DCNv3 (InternImage) keeps DCNv2's sampling, a kernel of P points each moved by a learned
offset and scaled by a learned modulation scalar, but drops the kernel's weights: the
channels are split into G groups of D, and each group sums its P modulated samples,

    out[n, oy, ox, g·D + c] = Σ_p m[n, oy, ox, g·P + p] · x[n, :, :, g·D + c](y_p, x_p),

a depthwise, deformable, weightless "convolution"; the layers before and after it (Linear
projections in the module) mix the channels.  Everything is channels-last:
x (N, H, W, G·D), offset (N, H_out, W_out, G·P·2), mask (N, H_out, W_out, G·P).

Kernel point p = i·kh + j is column i (outer, x-major) and row j; with ``remove_center``
(odd square kernels) the centre (kw // 2, kh // 2) is left out and P = kh·kw - 1.  Offset
channels (g·P + p)·2 and the next hold (dx, dy), in that order (deform_conv2d's is (dy, dx)).
With c_h = d_h (kh - 1) // 2 (the kernel centre's row, likewise c_w) and s = offset_scale,

    y_p = oy s_h - p_h + c_h + s (j d_h - c_h + dy),   x_p = ox s_w - p_w + c_w + s (i d_w - c_w + dx):

the offsets, and the kernel grid with them, are scaled about the kernel centre.  With s = 1
this is deform_conv2d's y = oy s_h - p_h + j d_h + dy.  x(y, x) is bilinear sampling
(``bilinear.py``: zero padding, the band -1 <= y < H, NaN / inf / huge locations read 0 and
get gradient 0).

DCNv4 samples the same way, from one tensor offset_mask (N, H_out, W_out, M), M >= G·3P:
group g's block starts at channel g·3P and holds its 2P offsets as (dx, dy) pairs, then its
P modulation scalars; channels G·3P .. M are padding, ignored (gradient 0).  The scalars are
used raw (``softmax=False``, DCNv4's choice) or normalised over each group's P points
(``softmax=True``, what DCNv3's module does before calling the core):
m_p = exp(l_p - max_q l_q) / Σ_q exp(l_q - max_q l_q).

Here the image is cut into G channel-first planes per image, so ``bilinear_sample_*`` reads
all the P·H_out·W_out points of a group in one call.
"""

from __future__ import annotations

import numpy as np

from .bilinear import bilinear_sample_backward, bilinear_sample_forward

__all__ = ["dcnv3_forward", "dcnv3_backward", "dcnv4_forward", "dcnv4_backward"]


def kernel_points(kernel_size, remove_center):
    """(i, j) = (column, row) of the P kernel points, x-major, as two int arrays."""
    kh, kw = kernel_size
    points = [(i, j) for i in range(kw) for j in range(kh)]
    if remove_center:
        points.remove((kw // 2, kh // 2))
    i, j = np.array(points).T
    return i, j


def sampling_locations(offset, kernel_size, stride, padding, dilation, group, offset_scale,
                       remove_center):
    """The (y, x) each output pixel, group and kernel point samples: (N, H_out, W_out, G, P, 2)."""
    (kh, kw), (s_h, s_w), (p_h, p_w), (d_h, d_w) = kernel_size, stride, padding, dilation
    batch, out_h, out_w, _ = offset.shape
    i, j = kernel_points(kernel_size, remove_center)
    delta = offset.reshape(batch, out_h, out_w, group, len(i), 2)
    dx, dy = delta[..., 0], delta[..., 1]
    c_h, c_w = (d_h * (kh - 1)) // 2, (d_w * (kw - 1)) // 2
    centre_y = (np.arange(out_h) * s_h - p_h + c_h)[None, :, None, None, None]  # (1, H_out, 1, 1, 1)
    centre_x = (np.arange(out_w) * s_w - p_w + c_w)[None, None, :, None, None]  # (1, 1, W_out, 1, 1)
    y = centre_y + offset_scale * ((j * d_h - c_h) + dy)
    x = centre_x + offset_scale * ((i * d_w - c_w) + dx)
    return np.stack([y, x], axis=-1)  # float64 locations, as the numba and cuda kernels compute


def _planes_and_points(x, offset, params):
    """x as (N·G, D, H, W) planes and the points each plane is read at, (N·G, H_out·W_out·P, 2)."""
    batch, height, width, channels = x.shape
    group = params[4]
    planes = x.reshape(batch, height, width, group, channels // group).transpose(0, 3, 4, 1, 2)
    locations = sampling_locations(offset, *params)  # (N, H_out, W_out, G, P, 2)
    points = locations.transpose(0, 3, 1, 2, 4, 5).reshape(batch * group, -1, 2)
    return np.ascontiguousarray(planes).reshape(batch * group, -1, height, width), points


def _by_group(mask, group):
    """(N, H_out, W_out, G·P) -> (N, G, 1, H_out, W_out, P): broadcasts over a group's D channels."""
    batch, out_h, out_w, _ = mask.shape
    return mask.reshape(batch, out_h, out_w, group, -1).transpose(0, 3, 1, 2, 4)[:, :, None]


def dcnv3_forward(x, offset, mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center):
    """out[n, oy, ox, g·D + c] = Σ_p m[n, oy, ox, g·P + p] · x[n, :, :, g·D + c](y_p, x_p)."""
    params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    batch, _, _, channels = x.shape
    _, out_h, out_w, _ = offset.shape
    planes, points = _planes_and_points(x, offset, params)
    values = bilinear_sample_forward(planes, points)  # x(y_p, x_p): (N·G, D, H_out·W_out·P)
    values = values.reshape(batch, group, channels // group, out_h, out_w, -1)
    out = (values * _by_group(mask, group)).sum(axis=-1)  # Σ_p m_p x(p): (N, G, D, H_out, W_out)
    return np.ascontiguousarray(out.transpose(0, 3, 4, 1, 2).reshape(batch, out_h, out_w, channels))


def dcnv3_backward(grad_out, x, offset, mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center):
    """(grad_x, grad_offset, grad_mask) of L = Σ grad_out · out.

    With v_c = x[n, :, :, g·D + c](y_p, x_p) the value point p reads in channel c of its group
    and G_c = grad_out[n, oy, ox, g·D + c]:

        grad_mask[g·P + p]        = Σ_c G_c v_c
        grad_x(q)                += Σ_{oy, ox, p} G(q, (y_p, x_p)) · m_p G_c     (the scatter)
        grad_offset[(g·P + p)·2]  = s · m_p Σ_c G_c dv_c/dx_p                    (dx)
        grad_offset[(g·P + p)·2+1]= s · m_p Σ_c G_c dv_c/dy_p                    (dy)

    since dy_p / d(dy) = s.  ``bilinear_sample_backward`` with the upstream gradient m_p G_c
    gives the scatter and m_p Σ_c G_c dv_c/dp in one call.
    """
    params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = offset.shape
    planes, points = _planes_and_points(x, offset, params)
    grad = grad_out.reshape(batch, out_h, out_w, group, -1).transpose(0, 3, 4, 1, 2)[..., None]
    grad_values = (grad * _by_group(mask, group)).reshape(batch * group, channels // group, -1)
    grad_planes, grad_points = bilinear_sample_backward(grad_values, planes, points)

    grad_x = grad_planes.reshape(batch, group, channels // group, height, width)
    grad_x = grad_x.transpose(0, 3, 4, 1, 2).reshape(x.shape)
    # grad_points (N·G, H_out·W_out·P, [y, x]) -> (N, H_out, W_out, G, P, [dx, dy]), times s
    grad_offset = grad_points.reshape(batch, group, out_h, out_w, -1, 2)[..., ::-1]
    grad_offset = offset_scale * grad_offset.transpose(0, 2, 3, 1, 4, 5).reshape(offset.shape)
    values = bilinear_sample_forward(planes, points).reshape(batch, group, channels // group,
                                                             out_h, out_w, -1)
    grad_mask = (grad * values).sum(axis=2)  # Σ_c G_c v_c: (N, G, H_out, W_out, P)
    grad_mask = grad_mask.transpose(0, 2, 3, 1, 4).reshape(mask.shape)
    return (np.ascontiguousarray(grad_x), np.ascontiguousarray(grad_offset, dtype=x.dtype),
            np.ascontiguousarray(grad_mask))


# ----------------------------------------------------------------------------- DCNv4
def _blocks(offset_mask, group, points):
    """Group g's block of 3P channels: (N, H_out, W_out, G, 3P) views of the offsets (the first
    2P) and of the modulation scalars (the last P); channels from G·3P on are left out."""
    batch, out_h, out_w, _ = offset_mask.shape
    blocks = offset_mask[..., :group * 3 * points].reshape(batch, out_h, out_w, group, 3 * points)
    return blocks[..., :2 * points], blocks[..., 2 * points:]


def _softmax(logits):
    """exp(l_p - max_q l_q) / Σ_q exp(l_q - max_q l_q) over the last axis (a group's P points)."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _unpack(offset_mask, kernel_size, group, remove_center, softmax):
    """DCNv4's offset_mask as DCNv3's (offset, mask), the mask softmax-normalised if asked."""
    batch, out_h, out_w, _ = offset_mask.shape
    points = kernel_size[0] * kernel_size[1] - int(remove_center)
    offset, logits = _blocks(offset_mask, group, points)
    mask = _softmax(logits) if softmax else logits
    return (offset.reshape(batch, out_h, out_w, -1), mask.reshape(batch, out_h, out_w, -1),
            points)


def dcnv4_forward(x, offset_mask, kernel_size, stride, padding, dilation, group, offset_scale,
                  remove_center, softmax):
    """DCNv3's sum with offsets and modulation unpacked from offset_mask (see the module doc)."""
    offset, mask, _ = _unpack(offset_mask, kernel_size, group, remove_center, softmax)
    return dcnv3_forward(x, offset, mask, kernel_size, stride, padding, dilation, group,
                         offset_scale, remove_center)


def dcnv4_backward(grad_out, x, offset_mask, kernel_size, stride, padding, dilation, group,
                   offset_scale, remove_center, softmax):
    """(grad_x, grad_offset_mask): DCNv3's gradients packed back into offset_mask's layout.

    With softmax, the gradient of logit l_p of m = softmax(l) is
    m_p (grad_m_p - Σ_q m_q grad_m_q).  The padding channels get 0.
    """
    offset, mask, points = _unpack(offset_mask, kernel_size, group, remove_center, softmax)
    grad_x, grad_offset, grad_mask = dcnv3_backward(grad_out, x, offset, mask, kernel_size,
                                                    stride, padding, dilation, group,
                                                    offset_scale, remove_center)
    batch, out_h, out_w, _ = offset_mask.shape
    grad_mask = grad_mask.reshape(batch, out_h, out_w, group, points)
    if softmax:
        m = mask.reshape(grad_mask.shape)
        grad_mask = m * (grad_mask - (m * grad_mask).sum(axis=-1, keepdims=True))
    grad_offset_mask = np.zeros(offset_mask.shape, offset_mask.dtype)  # C order: _blocks are views
    grad_offset_part, grad_mask_part = _blocks(grad_offset_mask, group, points)
    grad_offset_part[...] = grad_offset.reshape(grad_offset_part.shape)
    grad_mask_part[...] = grad_mask
    return grad_x, grad_offset_mask
