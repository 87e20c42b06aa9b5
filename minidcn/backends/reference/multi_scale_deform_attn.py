"""Multi-scale deformable attention (Deformable DETR), written as the formula (reference backend).

Shapes (channels-last, as the paper's code):

* value (N, S, M, D): L feature maps ("levels"), each flattened row-major and concatenated,
  S = Σ_l H_l W_l; M heads of D channels.  Level l occupies rows start_l ... start_l + H_l W_l
  of the S axis, start_l = Σ_{k<l} H_k W_k, and pixel (y, x) of it is row start_l + y W_l + x;
* spatial_shapes (L, 2): the integers (H_l, W_l);
* sampling_locations (N, Q, M, L, P, 2): for each query q, head m, level l and point p, a
  normalised position (u, v) = (x, y), nominally in [0, 1] (0 and 1 are the outer edges of
  the map, not the centres of its border pixels);
* attention_weights A (N, Q, M, L, P);
* output (N, Q, M·D), the heads' D channels side by side.

The formula.  Head m of query q reads, on every level l, P points, and sums them weighted:

    out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](y, x),
    x = u W_l - 0.5,   y = v H_l - 0.5,

where value_l(y, x) is bilinear sampling, x(p) = Σ_r G(r, p) x(r), with exactly the rules of
``bilinear.py``: zero padding one pixel wide (a point counts only inside -1 < y < H_l,
-1 < x < W_l), the one-sided position gradient at integer coordinates, and NaN, infinite or
huge locations reading 0 and receiving gradient 0.  The -0.5 is grid_sample's
align_corners=False: u = 0 is the left edge of the map, half a pixel left of the centre of
column 0.

Gradients, for an upstream gradient g[n, q, m·D + d] and the sampled value
s[n, q, m, l, p, d] = value_l[n, :, :, m, d](y, x):

    grad_A[n, q, m, l, p]     = Σ_d g[n, q, m·D + d] · s[n, q, m, l, p, d]
    grad_value_l[n, r, m, d]  = Σ_q Σ_p G(r, (y, x)) · A[n, q, m, l, p] · g[n, q, m·D + d]
    grad_loc[..., 0] (d/du)   = W_l · Σ_d A · g · d value_l(y, x)/dx
    grad_loc[..., 1] (d/dv)   = H_l · Σ_d A · g · d value_l(y, x)/dy

(the chain rule through x = u W_l - 0.5, y = v H_l - 0.5).  Here they are computed level by
level and head by head with the bilinear sampling of ``bilinear.py``: for one (l, m) the
level's map is a (N, D, H_l, W_l) image and the Q·P positions of every image are its points.
"""

from __future__ import annotations

import numpy as np

from .bilinear import bilinear_sample_backward, bilinear_sample_forward

__all__ = ["multi_scale_deform_attn_forward", "multi_scale_deform_attn_backward"]


def levels(spatial_shapes):
    """(l, start_l, H_l, W_l) for each level, as Python ints; start_l = Σ_{k<l} H_k W_k is the
    level's first row in value's S axis."""
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        yield level, start, int(height), int(width)
        start += int(height) * int(width)


def _level_image(value, start, height, width, m):
    """Level l of head m as an image batch: value[n, start + y W + x, m, d] -> (N, D, H, W)."""
    n = value.shape[0]
    rows = value[:, start:start + height * width, m, :]  # (N, H W, D)
    return np.ascontiguousarray(rows.transpose(0, 2, 1)).reshape(n, -1, height, width)


def _pixel_points(locations, level, m, height, width):
    """The (N, Q·P, 2) pixel positions (y, x) = (v H - 0.5, u W - 0.5) of head m on a level."""
    u, v = locations[:, :, m, level, :, 0], locations[:, :, m, level, :, 1]  # (N, Q, P)
    with np.errstate(over="ignore", invalid="ignore"):  # a huge u becomes ±inf: read as 0
        points = np.stack([v * height - 0.5, u * width - 0.5], axis=-1)
    return points.reshape(points.shape[0], -1, 2)


def multi_scale_deform_attn_forward(value, spatial_shapes, sampling_locations, attention_weights):
    """out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](y, x), as above."""
    n, _, heads, channels = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    out = np.zeros((n, queries, heads, channels), dtype=value.dtype)
    for level, start, height, width in levels(spatial_shapes):
        for m in range(heads):
            image = _level_image(value, start, height, width, m)
            pixels = _pixel_points(sampling_locations, level, m, height, width)
            sampled = bilinear_sample_forward(image, pixels).reshape(n, channels, queries, points)
            weights = attention_weights[:, :, m, level, :]  # A[n, q, p]
            out[:, :, m, :] += np.einsum("nqp,ndqp->nqd", weights, sampled)  # s[n, d, q, p]
    return out.reshape(n, queries, heads * channels)


def multi_scale_deform_attn_backward(grad_out, value, spatial_shapes, sampling_locations,
                                     attention_weights):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of L = Σ grad_out · out."""
    n, _, heads, channels = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    grad_out = np.asarray(grad_out, dtype=value.dtype).reshape(n, queries, heads, channels)
    grad_value = np.zeros_like(value)
    grad_locations = np.zeros_like(sampling_locations)
    grad_weights = np.zeros_like(attention_weights)
    for level, start, height, width in levels(spatial_shapes):
        for m in range(heads):
            image = _level_image(value, start, height, width, m)
            pixels = _pixel_points(sampling_locations, level, m, height, width)
            weights = attention_weights[:, :, m, level, :]  # A[n, q, p]
            g = grad_out[:, :, m, :]  # g[n, q, d]
            sampled = bilinear_sample_forward(image, pixels).reshape(n, channels, queries, points)
            grad_weights[:, :, m, level, :] = np.einsum("nqd,ndqp->nqp", g, sampled)
            # The gradient reaching sample s[n, d, q, p] is A[n, q, p] g[n, q, d].
            grad_sampled = np.einsum("nqp,nqd->ndqp", weights, g).reshape(n, channels, -1)
            grad_image, grad_pixels = bilinear_sample_backward(grad_sampled, image, pixels)
            grad_value[:, start:start + height * width, m, :] += (
                grad_image.reshape(n, channels, height * width).transpose(0, 2, 1))
            grad_pixels = grad_pixels.reshape(n, queries, points, 2)  # (d/dy, d/dx)
            grad_locations[:, :, m, level, :, 0] = width * grad_pixels[..., 1]
            grad_locations[:, :, m, level, :, 1] = height * grad_pixels[..., 0]
    return grad_value, grad_locations, grad_weights
