"""roi_align forward and forward+backward, float32: 512 RoIs over (2, 256, 64, 64), 7 x 7
bins, sampling_ratio 2, on each host backend beside torchvision.ops.roi_align when installed.

RoIs are random boxes 16 to 256 pixels wide in a 512 x 512 image, spatial_scale 1/8.
"""

from __future__ import annotations

import numpy as np

from .. import Tensor, backend, functional
from .timing import best_time, optional, print_table, rng_array

SHAPE = (2, 256, 64, 64)
NUM_ROIS = 512
OUTPUT_SIZE = (7, 7)
SAMPLING_RATIO = 2
SPATIAL_SCALE = 1 / 8
ALIGNED = True


def random_rois(num, batch, image_size, seed=0) -> np.ndarray:
    """(num, 5) float32 rows [batch_index, x1, y1, x2, y2] inside the image."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(16, 256, (num, 2))
    corner = rng.uniform(0, 1, (num, 2)) * (image_size - size)
    index = rng.integers(0, batch, (num, 1))
    return np.concatenate([index, corner, corner + size], axis=1).astype(np.float32)


def _minidcn_timings(name, x, rois, grad, repeat, warmup):
    def forward():
        with backend(name):
            return functional.roi_align(Tensor(x), rois, OUTPUT_SIZE, SPATIAL_SCALE,
                                        SAMPLING_RATIO, ALIGNED)

    def forward_backward():
        with backend(name):
            t = Tensor(x, requires_grad=True)
            functional.roi_align(t, rois, OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO,
                                 ALIGNED).backward(grad)

    return best_time(forward, repeat, warmup), best_time(forward_backward, repeat, warmup)


def _torchvision_timings(torch, ops, x, rois, grad, repeat):
    rois_t, grad_t = torch.from_numpy(rois), torch.from_numpy(grad)

    def forward():
        with torch.no_grad():
            return ops.roi_align(torch.from_numpy(x), rois_t, OUTPUT_SIZE, SPATIAL_SCALE,
                                 SAMPLING_RATIO, ALIGNED)

    def forward_backward():
        t = torch.from_numpy(x).requires_grad_(True)
        ops.roi_align(t, rois_t, OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO,
                      ALIGNED).backward(grad_t)

    return best_time(forward, repeat), best_time(forward_backward, repeat)


def run(repeat: int = 5) -> None:
    x = rng_array(SHAPE, seed=0)
    rois = random_rois(NUM_ROIS, SHAPE[0], SHAPE[2] / SPATIAL_SCALE)
    grad = rng_array((NUM_ROIS, SHAPE[1]) + OUTPUT_SIZE, seed=1)
    rows = [("minidcn reference (1 run)",) + _minidcn_timings("reference", x, rois, grad, 1, 0),
            ("minidcn numba",) + _minidcn_timings("numba", x, rois, grad, repeat, 1)]
    torch, ops = optional("torch"), optional("torchvision.ops")
    if torch is not None and ops is not None:
        rows.append((f"torchvision.ops.roi_align ({torch.get_num_threads()} threads)",)
                    + _torchvision_timings(torch, ops, x, rois, grad, repeat))
    baseline = rows[-1][0] if len(rows) == 3 else None
    print_table(f"roi_align float32: {NUM_ROIS} RoIs over {SHAPE}, {OUTPUT_SIZE} bins, "
                f"sampling_ratio {SAMPLING_RATIO}, aligned={ALIGNED}", rows, baseline)
