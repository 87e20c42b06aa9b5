"""Multi-scale deformable attention, Deformable DETR's module (Zhu et al., ICLR 2021), as
mmcv's ``MultiScaleDeformableAttention``, around the core ``F.multi_scale_deform_attn``.

A query q with a reference point r_q (normalised (x, y) in [0, 1]) reads, in each of M heads,
P points on each of L feature maps, and mixes what it read with attention weights:

    value ← value_proj(value), split into M heads of D = E / M channels
    Δ_{mlp} = sampling_offsets(query)             (pixels of level l; (dx, dy))
    A_{m,·} = softmax over the L·P points of attention_weights(query)
    location_{mlp} = r_q + Δ_{mlp} / (W_l, H_l)    (normalised)
    out = output_proj(Σ_l Σ_p A_{mlp} · value_l(location_{mlp}))

Initialisation, as in the paper's code and mmcv: ``sampling_offsets`` has zero weight and a
bias that points head m in direction θ_m = 2πm / M, (cos θ_m, sin θ_m) scaled so that its
larger component is 1, times p + 1 for the p-th point (the same on every level): at the
start each head looks along its own ray, 1, 2, ..., P pixels away.  ``attention_weights``
starts at zero (weight and bias), so the weights start uniform, 1 / (L·P).
``value_proj`` and ``output_proj`` are xavier-uniform with zero bias.  The state_dict keys
are mmcv's (sampling_offsets, attention_weights, value_proj, output_proj).

Differences from mmcv's module, all in what it does around the core: it always takes
batch-first tensors (mmcv's ``batch_first=True``); it returns the projected output
itself, without mmcv's dropout and residual (``dropout(out) + identity``, which the
Deformable DETR layer around it adds; the paper's own ``MSDeformAttn`` returns it as here);
there is no ``key``, ``query_pos``, ``key_padding_mask`` or ``level_start_index`` (computed
from spatial_shapes), no ``value_proj_ratio``, and reference boxes ((x, y, w, h), mmcv's
last axis of 4) are not accepted.  A reference point may be given once per query,
(N, Q, 2), and is then used on every level.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional._validate import (as_tensor, check_elements, check_int, check_same_device,
                                   check_same_dtype)
from ..functional.multi_scale_deform_attn import _spatial_shapes
from . import init
from .layers import Linear, _layer_dtype
from .module import Module

__all__ = ["MultiScaleDeformableAttention"]


def directional_offsets(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
    """The initial sampling offsets, (M, L, P, 2) as (dx, dy) in pixels: head m points along
    (cos θ_m, sin θ_m) / max(|cos θ_m|, |sin θ_m|), θ_m = 2πm / M, and point p goes p + 1
    times as far, on every level."""
    theta = np.arange(num_heads) * (2.0 * np.pi / num_heads)
    direction = np.stack([np.cos(theta), np.sin(theta)], -1)
    direction /= np.abs(direction).max(-1, keepdims=True)
    steps = np.arange(1, num_points + 1)[None, None, :, None]
    return np.broadcast_to(direction[:, None, None, :] * steps,
                           (num_heads, num_levels, num_points, 2)).copy()


class MultiScaleDeformableAttention(Module):
    """Deformable DETR's multi-scale deformable attention (see the module docstring).

    Args:
        embed_dims: E, the query and value width; divisible by num_heads.
        num_heads: M; num_levels: L, the feature maps; num_points: P, per head and level.
        generator: a ``numpy.random.Generator`` for the xavier draws; dtype: float32/float64.

    forward(query, reference_points, value, spatial_shapes):
        query: (N, Q, E).
        reference_points: (N, Q, 2) or (N, Q, L, 2), normalised (x, y) in [0, 1], (0, 0)
            the top-left corner of the map and (1, 1) the bottom-right.
        value: (N, S, E), the L maps flattened row-major and concatenated, S = Σ H_l W_l.
        spatial_shapes: (L, 2) integers, rows (H_l, W_l) (see ``F.multi_scale_deform_attn``).
        Returns (N, Q, E).
    """

    def __init__(self, embed_dims=256, num_heads=8, num_levels=4, num_points=4, *,
                 generator=None, dtype=np.float32):
        super().__init__()
        fn = "MultiScaleDeformableAttention"
        self.embed_dims = check_int(fn, "embed_dims", embed_dims, 1)
        self.num_heads = check_int(fn, "num_heads", num_heads, 1)
        self.num_levels = check_int(fn, "num_levels", num_levels, 1)
        self.num_points = check_int(fn, "num_points", num_points, 1)
        dtype = _layer_dtype(fn, dtype)
        if self.embed_dims % self.num_heads:
            raise ValueError(f"{fn}: embed_dims = {embed_dims} must be divisible by num_heads = "
                             f"{num_heads} (M heads of D = E / M channels)")
        e, m, lv, p = self.embed_dims, self.num_heads, self.num_levels, self.num_points
        # refused here, naming these arguments, rather than by a Linear naming its features
        check_elements(fn, "the projections' weight", (e, e), "embed_dims")
        check_elements(fn, "sampling_offsets' weight", (m * lv * p * 2, e),
                       "embed_dims, num_heads, num_levels and num_points")
        self.sampling_offsets = Linear(e, m * lv * p * 2, generator=generator, dtype=dtype)
        init.constant_(self.sampling_offsets.weight, 0.0)
        self.sampling_offsets.bias.data[...] = directional_offsets(m, lv, p).reshape(-1)
        self.attention_weights = Linear(e, m * lv * p, generator=generator, dtype=dtype)
        init.constant_(self.attention_weights.weight, 0.0)
        init.constant_(self.attention_weights.bias, 0.0)
        self.value_proj = Linear(e, e, generator=generator, dtype=dtype)
        self.output_proj = Linear(e, e, generator=generator, dtype=dtype)
        for layer in (self.value_proj, self.output_proj):
            init.xavier_uniform_(layer.weight, generator)
            init.constant_(layer.bias, 0.0)

    def forward(self, query, reference_points, value, spatial_shapes):
        fn = "MultiScaleDeformableAttention"
        q = as_tensor(fn, "query", query)
        v = as_tensor(fn, "value", value)
        ref = as_tensor(fn, "reference_points", reference_points)
        check_same_dtype(fn, query=q, reference_points=ref, value=v)
        check_same_device(fn, query=q, reference_points=ref, value=v)
        e, m, lv, p = self.embed_dims, self.num_heads, self.num_levels, self.num_points
        for name, t, layout in (("query", q, "(N, Q, E)"), ("value", v, "(N, S, E)")):
            if t.ndim != 3 or t.shape[2] != e:
                raise ValueError(f"{fn}: {name} must be {layout} with E = embed_dims = {e}, got "
                                 f"shape {t.shape}")
        n, queries = q.shape[:2]
        if v.shape[0] != n:
            raise ValueError(f"{fn}: value must have query's batch N = {n}, got shape {v.shape}")
        shapes = _spatial_shapes(fn, spatial_shapes, v.shape[1])
        if shapes.shape[0] != lv:
            raise ValueError(f"{fn}: spatial_shapes must have num_levels = {lv} rows, got "
                             f"{shapes.shape[0]}")
        if ref.shape == (n, queries, 2):
            ref = F.reshape(ref, (n, queries, 1, 1, 1, 2))
        elif ref.shape == (n, queries, lv, 2):
            ref = F.reshape(ref, (n, queries, 1, lv, 1, 2))
        else:
            raise ValueError(f"{fn}: reference_points must have shape (N, Q, 2) = "
                             f"{(n, queries, 2)} or (N, Q, L, 2) = {(n, queries, lv, 2)}, "
                             f"normalised (x, y), got {ref.shape}")
        heads = F.reshape(self.value_proj(v), (n, v.shape[1], m, e // m))
        offsets = F.reshape(self.sampling_offsets(q), (n, queries, m, lv, p, 2))
        logits = F.reshape(self.attention_weights(q), (n, queries, m, lv * p))
        weights = F.reshape(F.softmax(logits, -1), (n, queries, m, lv, p))
        pixels = shapes[:, ::-1].reshape(1, 1, 1, lv, 1, 2).astype(q.dtype)  # (W_l, H_l)
        locations = ref + offsets / pixels
        return self.output_proj(F.multi_scale_deform_attn(heads, shapes, locations, weights))

    def extra_repr(self) -> str:
        return (f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, "
                f"num_levels={self.num_levels}, num_points={self.num_points}")
