"""Multi-scale deformable attention (Deformable DETR's encoder), float32: N=4, four levels of
32x32, 16x16, 8x8 and 4x4, every position a query (Q=1360), 8 heads of 32 channels, 4
points per level and head; forward and backward for value, sampling locations and
attention weights.

The peer is PyTorch itself, as mmcv's ``multi_scale_deformable_attn_pytorch`` computes the
op: per level, one ``torch.nn.functional.grid_sample`` call samples every head's points,
then the attention weights sum them (written here from that description).  The reference
backend is left out (NumPy takes seconds here).
"""

from __future__ import annotations

import numpy as np

from ..common import Case, off_the_grid, op_implementations, require, rng_array

ORDER = 7
FULL = dict(batch=4, shapes=((32, 32), (16, 16), (8, 8), (4, 4)), heads=8, depth=32, points=4)
SMOKE = dict(batch=1, shapes=((4, 5), (2, 3)), heads=2, depth=3, points=2)


def arrays(batch, shapes, heads, depth, points) -> dict:
    """value, sampling_locations (normalised, off the pixel grid of their level), attention
    weights (each query's and head's summing to 1), grad_y."""
    keys, levels = sum(h * w for h, w in shapes), len(shapes)
    size = np.array(shapes, np.float64)[:, ::-1]  # (W_l, H_l) per level, as x and y
    pixels = off_the_grid((batch, keys, heads, levels, points, 2), 1, spread=1.0)
    centres = np.random.default_rng(2).uniform(0, 1, (batch, keys, heads, levels, 1, 2)) * size
    locations = (np.floor(centres) + pixels + 0.5) / size  # x = u W - 0.5 lands on pixels
    weights = np.random.default_rng(3).uniform(0.5, 1.5, (batch, keys, heads, levels * points))
    weights /= weights.sum(-1, keepdims=True)
    return dict(value=rng_array((batch, keys, heads, depth), 0), sampling_locations=locations.astype(np.float32),
                attention_weights=weights.reshape(batch, keys, heads, levels, points).astype(np.float32),
                grad_y=rng_array((batch, keys, heads * depth), 4))


def torch_msda(torch, value, shapes, sampling_locations, attention_weights):
    """Per level: grid_sample of all heads' points; then the weighted sum over levels and points."""
    F = torch.nn.functional
    n, _, heads, depth = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1
    sampled, start = [], 0
    for level, (height, width) in enumerate(shapes):
        v = value[:, start:start + height * width].permute(0, 2, 3, 1).reshape(n * heads, depth, height, width)
        start += height * width
        grid = grids[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(n * heads, queries, points, 2)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, -2).flatten(-2) * weights).sum(-1)  # (n heads, depth, queries)
    return out.view(n, heads * depth, queries).transpose(1, 2)


def cases(smoke: bool) -> list:
    shape = SMOKE if smoke else FULL
    shapes = np.array(shape["shapes"], np.int64)

    def torch_call():
        torch = require("torch")
        return lambda value, sampling_locations, attention_weights: torch_msda(
            torch, value, shape["shapes"], sampling_locations, attention_weights)

    impls = op_implementations(
        lambda: arrays(**shape),
        lambda F, value, sampling_locations, attention_weights: F.multi_scale_deform_attn(
            value, shapes, sampling_locations, attention_weights),
        torch_call, ("value", "sampling_locations", "attention_weights"), torch_label="torch grid_sample",
        backends=("numba",))
    levels = ", ".join(f"{h}x{w}" for h, w in shape["shapes"])
    queries = sum(h * w for h, w in shape["shapes"])
    return [Case(f"multi_scale_deform_attn float32, N={shape['batch']}, levels {levels}, {queries} queries, "
                 f"{shape['heads']} heads x {shape['depth']} channels, {shape['points']} points",
                 impls, peer="torch grid_sample",
                 skipped={"minidcn reference": "left out: NumPy takes seconds per fwd+bwd here"})]
