"""Multi-scale deformable attention with numba.cuda kernels (cuda backend).

The formula and its gradients are in ``backends/reference/multi_scale_deform_attn.py``:

    out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](v H_l - 0.5, u W_l - 0.5)

The scalar formulas (``sampling_point``: the rows of the channels-last value that hold a
point's four neighbours, its bilinear weights and their derivatives; ``point_gradients``:
a point's gradients from its corner sums) are written once in
``formulas/multi_scale_deform_attn.py``, from the bilinear ones, and compiled here as device
functions with ``for_gpu``; the numba_cpu backend compiles the same source.

One thread per (n, q, m), looping over the levels and points, the weights computed once per
point and reused across the head's D channels.  The forward pass writes only the thread's
own out[n, q, m·D:(m + 1)·D].  The backward pass scatters into grad_value with
``cuda.atomic.add`` (queries share neighbours; written in the kernel body, as
``cuda/bilinear.py`` explains), so on a real GPU the order of those additions, hence the
last bits of grad_value in float, may vary between runs; each thread writes the gradients of
its own points, grad_locations[n, q, m] and grad_attention_weights[n, q, m], alone.
spatial_shapes is copied to the device (L pairs) at each call.

Rounding on a real GPU.  NVVM fuses a multiply and an add into one FMA (numba's CUDA target
allows it even without fastmath; the PTX shows ``fma.rn.f64`` for v H - 0.5), so there the
pixel position is rounded once where the reference rounds twice.  A location that lands
exactly on a pixel coordinate, where the one-sided position gradient jumps, can then fall
one rounding below it and take the gradient from the other side.  The simulator, in which
the tests run, rounds as the reference does; the numba_cpu kernels keep strict arithmetic
for this reason.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import for_gpu
from ..formulas import multi_scale_deform_attn as formulas

__all__ = ["multi_scale_deform_attn_forward", "multi_scale_deform_attn_backward"]

sampling_point, point_gradients = for_gpu(formulas.sampling_point, formulas.point_gradients)


@cuda.jit
def _forward_kernel(value, spatial_shapes, locations, weights, out):
    """out[n, q, m, :] = Σ_l Σ_p Σ_i A[n, q, m, l, p] w_i value[n, row_i, m, :]; one thread per
    (n, q, m)."""
    _, queries, heads, levels, points = weights.shape
    for t in range(cuda.grid(1), weights.shape[0] * queries * heads, cuda.gridsize(1)):
        n, q, m = t // (queries * heads), (t // heads) % queries, t % heads
        for d in range(value.shape[3]):
            out[n, q, m, d] = 0.0
        for level in range(levels):
            for p in range(points):
                rows, w, _, _ = sampling_point(spatial_shapes, level, locations[n, q, m, level, p])
                a = weights[n, q, m, level, p]
                for i in range(4):
                    if rows[i] >= 0:  # a neighbour that is read
                        coefficient = a * w[i]
                        for d in range(value.shape[3]):
                            out[n, q, m, d] += coefficient * value[n, rows[i], m, d]


@cuda.jit
def _backward_kernel(grad_out, value, spatial_shapes, locations, weights, grad_value,
                     grad_locations, grad_weights):
    """Scatter into grad_value (atomics), reduce each point's gradients; one thread per (n, q, m).

    With S_i = Σ_d g_d value[n, row_i, m, d] (g = grad_out[n, q, m, :]):
    grad_value[n, row_i, m, :] += A w_i g,  grad_A = Σ_i w_i S_i,
    grad_loc = (W_l A Σ_i w_dx_i S_i, H_l A Σ_i w_dy_i S_i).
    """
    _, queries, heads, levels, points = weights.shape
    for t in range(cuda.grid(1), weights.shape[0] * queries * heads, cuda.gridsize(1)):
        n, q, m = t // (queries * heads), (t // heads) % queries, t % heads
        for level in range(levels):
            for p in range(points):
                rows, w, w_dy, w_dx = sampling_point(spatial_shapes, level,
                                                     locations[n, q, m, level, p])
                a = weights[n, q, m, level, p]
                s = cuda.local.array(4, float64)
                for i in range(4):
                    s[i] = 0.0
                    if rows[i] >= 0:
                        coefficient = a * w[i]
                        for d in range(value.shape[3]):
                            g = grad_out[n, q, m, d]
                            s[i] += g * value[n, rows[i], m, d]
                            cuda.atomic.add(grad_value, (n, rows[i], m, d), coefficient * g)
                grad_weights[n, q, m, level, p] = point_gradients(
                    spatial_shapes, level, s, a, w, w_dy, w_dx, grad_locations[n, q, m, level, p])


def multi_scale_deform_attn_forward(value, spatial_shapes, sampling_locations, attention_weights):
    """out (N, Q, M·D); value (N, S, M, D), spatial_shapes (L, 2) host ints,
    sampling_locations (N, Q, M, L, P, 2) normalised (x, y), attention_weights (N, Q, M, L, P)."""
    n, _, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    out = CudaArray.empty((n, queries, heads, channels), value.dtype)
    shapes = cuda.to_device(np.ascontiguousarray(spatial_shapes, dtype=np.int64))
    _forward_kernel[grid_for(n * queries * heads)](
        value.dev, shapes, sampling_locations.dev, attention_weights.dev, out.dev)
    return out.reshape(n, queries, heads * channels)


def multi_scale_deform_attn_backward(grad_out, value, spatial_shapes, sampling_locations,
                                     attention_weights):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of L = Σ grad_out · out."""
    n, _, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    grad_value = CudaArray.zeros(value.shape, value.dtype)
    grad_locations = CudaArray.empty(sampling_locations.shape, value.dtype)
    grad_weights = CudaArray.empty(attention_weights.shape, value.dtype)
    shapes = cuda.to_device(np.ascontiguousarray(spatial_shapes, dtype=np.int64))
    _backward_kernel[grid_for(n * queries * heads)](
        grad_out.reshape(n, queries, heads, channels).dev, value.dev, shapes,
        sampling_locations.dev, attention_weights.dev, grad_value.dev, grad_locations.dev,
        grad_weights.dev)
    return grad_value, grad_locations, grad_weights
