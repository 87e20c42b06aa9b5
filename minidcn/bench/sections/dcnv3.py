"""DCNv3 core (InternImage), float32: N=8, 56x56, G=4 groups of D=16 channels, 3x3 kernel,
padding 1, channels-last; forward and backward for input, offset and mask.

The peer is PyTorch itself, as InternImage's ``dcnv3_core_pytorch`` computes the op: pad the
input, turn every sampling position into grid_sample's [-1, 1] coordinates, sample all
points of every group with one ``torch.nn.functional.grid_sample`` call, weight by the mask
and sum over the points (written here from that description).  The reference backend is
left out (NumPy takes seconds here).
"""

from __future__ import annotations

import numpy as np

from ..common import Case, off_the_grid, op_implementations, require, rng_array

ORDER = 6
KERNEL, PADDING, OFFSET_SCALE = 3, 1, 1.0
FULL, SMOKE = (8, 56, 4, 16), (1, 5, 2, 3)  # batch, size, groups, channels per group


def arrays(batch, size, groups, depth) -> dict:
    """input, offset (off the pixel grid), mask (each group's points summing to 1), grad_y."""
    points = KERNEL * KERNEL
    mask = np.random.default_rng(2).uniform(0.5, 1.5, (batch, size, size, groups, points))
    mask = (mask / mask.sum(-1, keepdims=True)).reshape(batch, size, size, groups * points)
    return dict(input=rng_array((batch, size, size, groups * depth), 0),
                offset=off_the_grid((batch, size, size, groups * points * 2), 1),
                mask=mask.astype(np.float32), grad_y=rng_array((batch, size, size, groups * depth), 3))


def torch_dcnv3(torch, input, offset, mask, groups):
    """The DCNv3 core with grid_sample (stride 1, dilation 1, padding PADDING).

    Kernel point p = i k + j is column i and row j (x-major); offset holds (dx, dy) pairs.
    """
    F = torch.nn.functional
    n, height, width, channels = input.shape
    depth, points, centre = channels // groups, KERNEL * KERNEL, (KERNEL - 1) // 2
    padded = F.pad(input, (0, 0, PADDING, PADDING, PADDING, PADDING))
    hp, wp = height + 2 * PADDING, width + 2 * PADDING
    ho, wo = offset.shape[1:3]
    steps = torch.arange(KERNEL, dtype=input.dtype) - centre
    kernel_x, kernel_y = steps.repeat_interleave(KERNEL), steps.repeat(KERNEL)  # x-major points
    pairs = offset.view(n, ho, wo, groups, points, 2)
    x = torch.arange(wo, dtype=input.dtype).view(1, 1, wo, 1, 1) + centre + OFFSET_SCALE * (kernel_x + pairs[..., 0])
    y = torch.arange(ho, dtype=input.dtype).view(1, ho, 1, 1, 1) + centre + OFFSET_SCALE * (kernel_y + pairs[..., 1])
    grid = torch.stack(((x + 0.5) * (2 / wp) - 1, (y + 0.5) * (2 / hp) - 1), -1)  # (n, ho, wo, G, P, 2)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * groups, ho * wo, points, 2)
    value = padded.view(n, hp, wp, groups, depth).permute(0, 3, 4, 1, 2).reshape(n * groups, depth, hp, wp)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.view(n, ho, wo, groups, points).permute(0, 3, 1, 2, 4).reshape(n * groups, 1, ho * wo, points)
    out = (sampled * weights).sum(-1)  # (n G, D, ho wo)
    return out.view(n, groups, depth, ho, wo).permute(0, 3, 4, 1, 2).reshape(n, ho, wo, channels)


def cases(smoke: bool) -> list:
    batch, size, groups, depth = SMOKE if smoke else FULL

    def torch_call():
        torch = require("torch")
        return lambda input, offset, mask: torch_dcnv3(torch, input, offset, mask, groups)

    impls = op_implementations(
        lambda: arrays(batch, size, groups, depth),
        lambda F, input, offset, mask: F.dcnv3(input, offset, mask, KERNEL, 1, PADDING, 1, groups, OFFSET_SCALE),
        torch_call, ("input", "offset", "mask"), torch_label="torch grid_sample", backends=("numba",))
    return [Case(f"dcnv3 core float32, N={batch}, {size}x{size}, G={groups}, D={depth}, "
                 f"{KERNEL}x{KERNEL}, padding {PADDING}, channels-last", impls, peer="torch grid_sample",
                 skipped={"minidcn reference": "left out: NumPy takes seconds per fwd+bwd here"})]
