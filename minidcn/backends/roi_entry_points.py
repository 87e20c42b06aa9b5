"""Which switches each sampled RoI op sets: the one mapping all three backends call.

RoIAlign, deformable RoI pooling and its position-sensitive form are one computation with
switches (see ``reference/roi_pool.py``): average bilinear samples over each bin, the bins
moved by offsets (γ · offset · RoI size) and weighted by a mask, with channels grouped per
bin or not.  Each backend implements that computation once, as

    _forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma,
             aligned, position_sensitive) -> y
    _backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale, sampling_ratio,
              gamma, aligned, position_sensitive) -> (grad_x, grad_offset, grad_mask)

(offset None reads as zeros, mask None as ones; backward returns None for grad_offset and
grad_mask when x is None), and each backend's ``roi_pool.py`` declares the six public
kernels as ``def``s that pass its pair to the functions below, which set the switches:
RoIAlign has no offset, no mask, γ = 0 and its own ``aligned``; the deformable poolings
are always aligned (mmcv's convention) and differ in ``position_sensitive``.  Each function
here takes the backend's general kernel first, then the public kernel's own arguments.
"""

from __future__ import annotations

__all__ = [
    "roi_align_forward", "roi_align_backward",
    "deform_roi_pool_forward", "deform_roi_pool_backward",
    "deform_ps_roi_pool_forward", "deform_ps_roi_pool_backward",
]


def roi_align_forward(forward, x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return forward(x, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0,
                   bool(aligned), False)


def roi_align_backward(backward, grad_y, rois, input_shape, output_size, spatial_scale,
                       sampling_ratio, aligned):
    grad_x, _, _ = backward(grad_y, None, rois, None, None, input_shape, spatial_scale,
                            sampling_ratio, 0.0, bool(aligned), False)
    return grad_x


def deform_roi_pool_forward(forward, x, rois, offset, mask, output_size, spatial_scale,
                            sampling_ratio, gamma):
    return forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma,
                   True, False)


def deform_roi_pool_backward(backward, grad_y, x, rois, offset, mask, output_size,
                             spatial_scale, sampling_ratio, gamma):
    grad_x, grad_offset, grad_mask = backward(grad_y, x, rois, offset, mask, x.shape,
                                              spatial_scale, sampling_ratio, gamma, True, False)
    return grad_x, grad_offset, grad_mask if mask is not None else None


def deform_ps_roi_pool_forward(forward, x, rois, offset, output_size, spatial_scale,
                               sampling_ratio, gamma):
    return forward(x, rois, offset, None, output_size, spatial_scale, sampling_ratio, gamma,
                   True, True)


def deform_ps_roi_pool_backward(backward, grad_y, x, rois, offset, output_size, spatial_scale,
                                sampling_ratio, gamma):
    grad_x, grad_offset, _ = backward(grad_y, x, rois, offset, None, x.shape, spatial_scale,
                                      sampling_ratio, gamma, True, True)
    return grad_x, grad_offset
