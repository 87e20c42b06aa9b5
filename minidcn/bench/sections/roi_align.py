"""roi_align, float32: 512 RoIs over (2, 256, 64, 64), 7x7 bins, sampling_ratio 2, aligned,
spatial_scale 1/8; beside torchvision.ops.roi_align.  RoIs are random boxes 16 to 256
pixels wide in a 512 x 512 image.  The reference backend is left out (about 3 s per
forward+backward)."""

from __future__ import annotations

import numpy as np

from ..common import Case, op_implementations, require, rng_array

ORDER = 4
SHAPE, NUM_ROIS = (2, 256, 64, 64), 512
SMOKE_SHAPE, SMOKE_ROIS = (1, 2, 8, 8), 3
OUTPUT_SIZE, SAMPLING_RATIO, SPATIAL_SCALE, ALIGNED = (7, 7), 2, 1 / 8, True


def random_rois(num, batch, image_size, seed=0) -> np.ndarray:
    """(num, 5) float32 rows [batch_index, x1, y1, x2, y2] inside the image."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(16, 256, (num, 2)) * min(1.0, image_size / 512)
    corner = rng.uniform(0, 1, (num, 2)) * (image_size - size)
    index = rng.integers(0, batch, (num, 1))
    return np.concatenate([index, corner, corner + size], axis=1).astype(np.float32)


def arrays(shape, num_rois) -> dict:
    return dict(x=rng_array(shape, 0), rois=random_rois(num_rois, shape[0], shape[2] / SPATIAL_SCALE),
                grad_y=rng_array((num_rois, shape[1]) + OUTPUT_SIZE, 1))


def _minidcn(F, x, rois):
    return F.roi_align(x, rois, OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO, ALIGNED)


def _torchvision():
    roi_align = require("torchvision.ops").roi_align

    return lambda x, rois: roi_align(x, rois, OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO, ALIGNED)


def cases(smoke: bool) -> list:
    shape, num = (SMOKE_SHAPE, SMOKE_ROIS) if smoke else (SHAPE, NUM_ROIS)
    impls = op_implementations(lambda: arrays(shape, num), _minidcn, _torchvision, ("x",),
                               torch_label="torchvision", backends=("numba",))
    return [Case(f"roi_align float32, {num} RoIs over {shape}, {OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]} bins, "
                 f"sampling_ratio {SAMPLING_RATIO}, aligned", impls, peer="torchvision",
                 skipped={"minidcn reference": "left out: NumPy takes about 3 s per fwd+bwd here"})]
