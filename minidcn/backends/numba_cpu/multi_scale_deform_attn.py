"""Multi-scale deformable attention with Numba loops (numba_cpu backend).

The formula and its gradients are in ``backends/reference/multi_scale_deform_attn.py``:

    out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](v H_l - 0.5, u W_l - 0.5)

with bilinear sampling x(p) = Σ_i w_i x(q_i) over the four neighbours q_i of p (zero
padding, the one-sided position gradient, NaN and far-away points reading 0).

What makes it fast:

* **The weights once per point.**  Everything that depends on the sampling point and not on
  the channel (``sampling_point``: the rows of value that hold its four neighbours, the four
  bilinear weights and their derivatives) is computed once, and A · w_i is folded into one
  coefficient per neighbour, reused for all D channels of the head.
* **Channels-last, so the channel loop is contiguous.**  value[n, row, m, :] holds the D
  channels of one head at one pixel side by side, and so do out[n, q, m·D:(m + 1)·D] and
  grad_value[n, row, m, :]: the innermost loop over d reads and writes consecutive memory,
  which the compiler turns into vector instructions.  The scalar formulas are written once
  in ``formulas/multi_scale_deform_attn.py`` (built from those of ``formulas/bilinear.py``),
  compiled here with ``for_cpu`` and inlined into the loops.
* **Reordered sums, only in the channel loops.**  The two loops over d (``_add_scaled`` and
  ``_scatter_and_dot``) are compiled with ``fastmath=REORDER`` (see ``floating.py``): the
  backward's per-neighbour dot product S_i = Σ_d g_d value[q_i, d] runs as a vector
  reduction, and multiply-adds fuse into FMAs.  LLVM inlines both into the kernels.  The
  kernels themselves keep strict IEEE arithmetic, because a fused u W - 0.5 (one rounding
  instead of two) can move a point that sits exactly on a pixel, where the one-sided
  position gradient jumps, to just below it: its pixel position must round exactly as the
  reference computes it.

Threads and races.  The forward pass gives each thread whole (n, q, m) triples: it owns
out[n, q, m·D:(m + 1)·D].  The backward pass scatters into grad_value, and any query can
reach any row, so a thread owns a whole (image, head) pair (n, m): grad_value[n, :, m, :]
and the gradients of that head's points, grad_locations[n, :, m] and
grad_attention_weights[n, :, m], are written by that thread alone, in a fixed order (q, l,
p, neighbour, d).  Nothing is shared, every sum runs in a fixed order, so the results are
bitwise the same for any number of threads.  The price: the backward has N · M tasks (8
heads are 8 tasks per image, plenty for a laptop's cores; one image with one head runs on
one thread).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import for_cpu
from ..formulas import multi_scale_deform_attn as formulas
from .floating import REORDER

__all__ = ["multi_scale_deform_attn_forward", "multi_scale_deform_attn_backward"]

sampling_point, point_gradients = for_cpu(formulas.sampling_point, formulas.point_gradients)


@njit(cache=True, parallel=True)
def _forward(value, spatial_shapes, locations, weights, out):
    """out[n, q, m, :] = Σ_l Σ_p Σ_i A[n, q, m, l, p] w_i value[n, row_i, m, :]; one thread
    per (n, q, m), the channel loop innermost."""
    _, queries, heads, levels, points = weights.shape
    for t in prange(weights.shape[0] * queries * heads):
        n, q, m = t // (queries * heads), (t // heads) % queries, t % heads
        out[n, q, m, :] = 0.0
        for level in range(levels):
            for p in range(points):
                rows, w, _, _ = sampling_point(spatial_shapes, level, locations[n, q, m, level, p])
                _add_point(out[n, q, m], weights[n, q, m, level, p], w, rows, value, n, m)


@njit(cache=True, inline="always")
def _add_point(target, a, w, rows, value, n, m):
    """target[:] += Σ_i a w_i value[n, rows_i, m, :] over the neighbours that are read
    (row >= 0)."""
    for i in range(4):
        if rows[i] >= 0:
            _add_scaled(target, a * w[i], value[n, rows[i], m])


@njit(cache=True, fastmath=REORDER)
def _add_scaled(target, coefficient, source):
    """target[:] += coefficient · source[:]: one neighbour's D channels (FMAs allowed)."""
    for d in range(target.shape[0]):
        target[d] += coefficient * source[d]


@njit(cache=True, fastmath=REORDER)
def _scatter_and_dot(g, value, grad_value, n, row, m, coefficient):
    """grad_value[n, row, m, :] += coefficient · g, and return S = Σ_d g_d value[n, row, m, d]:
    one neighbour's D channels (a reordered sum: a vector reduction); 0 for row -1 (a
    neighbour outside the map)."""
    if row < 0:
        return 0.0
    total = 0.0
    for d in range(g.shape[0]):
        total += g[d] * value[n, row, m, d]
        grad_value[n, row, m, d] += coefficient * g[d]
    return total


@njit(cache=True, parallel=True)
def _backward(grad_out, value, spatial_shapes, locations, weights, grad_value, grad_locations,
              grad_weights):
    """One thread per (image n, head m), the owner of grad_value[n, :, m, :].

    For every point, with S_i = Σ_d g_d value[n, row_i, m, d] (the gradient reaching
    neighbour i, g = grad_out[n, q, m, :]):

        grad_value[n, row_i, m, :] += A w_i g
        grad_A         = Σ_i w_i S_i                    (the sampled value against g)
        grad_loc (u)   = W_l · A · Σ_i w_dx_i S_i,   grad_loc (v) = H_l · A · Σ_i w_dy_i S_i
    """
    _, queries, heads, levels, points = weights.shape
    for t in prange(weights.shape[0] * heads):
        n, m = t // heads, t % heads
        grad_value[n, :, m, :] = 0.0
        for q in range(queries):
            for level in range(levels):
                for p in range(points):
                    rows, w, w_dy, w_dx = sampling_point(spatial_shapes, level,
                                                         locations[n, q, m, level, p])
                    a = weights[n, q, m, level, p]
                    g = grad_out[n, q, m]
                    s = (_scatter_and_dot(g, value, grad_value, n, rows[0], m, a * w[0]),
                         _scatter_and_dot(g, value, grad_value, n, rows[1], m, a * w[1]),
                         _scatter_and_dot(g, value, grad_value, n, rows[2], m, a * w[2]),
                         _scatter_and_dot(g, value, grad_value, n, rows[3], m, a * w[3]))
                    grad_weights[n, q, m, level, p] = point_gradients(
                        spatial_shapes, level, s, a, w, w_dy, w_dx, grad_locations[n, q, m, level, p])


def _arrays(value, spatial_shapes, sampling_locations, attention_weights):
    return (np.ascontiguousarray(value), np.ascontiguousarray(spatial_shapes, dtype=np.int64),
            np.ascontiguousarray(sampling_locations), np.ascontiguousarray(attention_weights))


def multi_scale_deform_attn_forward(value, spatial_shapes, sampling_locations, attention_weights):
    """out (N, Q, M·D) (see ``_forward``); value (N, S, M, D), spatial_shapes (L, 2) ints,
    sampling_locations (N, Q, M, L, P, 2) normalised (x, y), attention_weights (N, Q, M, L, P)."""
    value, shapes, locations, weights = _arrays(value, spatial_shapes, sampling_locations,
                                                attention_weights)
    n, _, heads, channels = value.shape
    out = np.empty((n, locations.shape[1], heads, channels), dtype=value.dtype)
    _forward(value, shapes, locations, weights, out)
    return out.reshape(n, locations.shape[1], heads * channels)


def multi_scale_deform_attn_backward(grad_out, value, spatial_shapes, sampling_locations,
                                     attention_weights):
    """(grad_value, grad_sampling_locations, grad_attention_weights) of L = Σ grad_out · out."""
    value, shapes, locations, weights = _arrays(value, spatial_shapes, sampling_locations,
                                                attention_weights)
    grad_out = np.ascontiguousarray(grad_out, dtype=value.dtype).reshape(
        value.shape[0], locations.shape[1], value.shape[2], value.shape[3])
    grad_value = np.empty_like(value)
    grad_locations = np.empty_like(locations)
    grad_weights = np.empty_like(weights)
    _backward(grad_out, value, shapes, locations, weights, grad_value, grad_locations, grad_weights)
    return grad_value, grad_locations, grad_weights
