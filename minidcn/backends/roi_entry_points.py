"""The public sampling RoI kernels of a backend, written once over its two general ones.

RoIAlign, deformable RoI pooling and its position-sensitive form are one computation with
switches (see ``reference/roi_pool.py``): average bilinear samples over each bin, the bins
moved by offsets (γ · offset · RoI size) and weighted by a mask, with channels grouped per
bin or not.  The numba and cuda backends each implement that computation once, as

    forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma,
            aligned, position_sensitive) -> y
    backward(grad_y, x, rois, offset, mask, input_shape, spatial_scale, sampling_ratio,
             gamma, aligned, position_sensitive) -> (grad_x, grad_offset, grad_mask)

(backward returns None for grad_offset and grad_mask when x is None), and
:func:`entry_points` turns that pair into the six kernels every backend exports, with the
switches each op sets: RoIAlign has no offset, no mask, γ = 0 and its own ``aligned``;
the deformable poolings are always aligned (mmcv's convention) and differ in
``position_sensitive``.
"""

from __future__ import annotations

__all__ = ["entry_points"]


def entry_points(forward, backward):
    """(roi_align_forward, roi_align_backward, deform_roi_pool_forward,
    deform_roi_pool_backward, deform_ps_roi_pool_forward, deform_ps_roi_pool_backward)."""

    def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
        return forward(x, rois, None, None, output_size, spatial_scale, sampling_ratio, 0.0,
                       bool(aligned), False)

    def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale,
                           sampling_ratio, aligned):
        grad_x, _, _ = backward(grad_y, None, rois, None, None, input_shape, spatial_scale,
                                sampling_ratio, 0.0, bool(aligned), False)
        return grad_x

    def deform_roi_pool_forward(x, rois, offset, mask, output_size, spatial_scale,
                                sampling_ratio, gamma):
        return forward(x, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                       gamma, True, False)

    def deform_roi_pool_backward(grad_y, x, rois, offset, mask, output_size, spatial_scale,
                                 sampling_ratio, gamma):
        grad_x, grad_offset, grad_mask = backward(grad_y, x, rois, offset, mask, x.shape,
                                                  spatial_scale, sampling_ratio, gamma, True,
                                                  False)
        return grad_x, grad_offset, grad_mask if mask is not None else None

    def deform_ps_roi_pool_forward(x, rois, offset, output_size, spatial_scale,
                                   sampling_ratio, gamma):
        return forward(x, rois, offset, None, output_size, spatial_scale, sampling_ratio,
                       gamma, True, True)

    def deform_ps_roi_pool_backward(grad_y, x, rois, offset, output_size, spatial_scale,
                                    sampling_ratio, gamma):
        grad_x, grad_offset, _ = backward(grad_y, x, rois, offset, None, x.shape,
                                          spatial_scale, sampling_ratio, gamma, True, True)
        return grad_x, grad_offset

    return (roi_align_forward, roi_align_backward, deform_roi_pool_forward,
            deform_roi_pool_backward, deform_ps_roi_pool_forward, deform_ps_roi_pool_backward)
