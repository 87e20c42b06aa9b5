"""deform_conv2d, float32: B=8, C=64->64, 64x64, 3x3, padding 1, with mask (DCNv2).

Beside torchvision.ops.deform_conv2d, and torch's plain conv2d at the same shape: the
convolution's own cost, for scale (the same GEMM, without the sampling).  Offsets are a few
pixels.  The reference backend is left out: one NumPy forward+backward takes about 8 s.
Under the table: the peak memory of one numba forward+backward at B=32, C=128->128, in a
fresh process (the column buffer is chunked, see ``backends/numba_cpu/deform_conv.py``).
"""

from __future__ import annotations

import numpy as np

from ..common import Case, off_the_grid, op_implementations, require, rng_array, torch_op
from ..memory import peak_memory_lines

ORDER = 1
KERNEL, PADDING = 3, 1
FULL, SMOKE = (8, 64, 64, 64), (1, 4, 4, 6)  # batch, c_in, c_out, size
GRAD_OF = ("x", "offset", "mask", "weight", "bias")


def arrays(batch, c_in, c_out, size) -> dict:
    """x, offset (a few pixels, off the pixel grid), mask in [0, 1], weight, bias, grad_y."""
    points = KERNEL * KERNEL
    out = size + 2 * PADDING - KERNEL + 1
    mask = np.random.default_rng(2).uniform(0, 1, (batch, points, out, out)).astype(np.float32)
    return dict(x=rng_array((batch, c_in, size, size), 0),
                offset=off_the_grid((batch, 2 * points, out, out), 1), mask=mask,
                weight=rng_array((c_out, c_in, KERNEL, KERNEL), 3, scale=0.05),
                bias=rng_array((c_out,), 4), grad_y=rng_array((batch, c_out, out, out), 5))


def _minidcn(F, x, offset, mask, weight, bias):
    return F.deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask)


def _torchvision():
    deform_conv2d = require("torchvision.ops").deform_conv2d

    return lambda x, offset, mask, weight, bias: deform_conv2d(x, offset, weight, bias,
                                                               padding=PADDING, mask=mask)


def _torch_conv2d(shape):
    torch = require("torch")

    data = {k: v for k, v in arrays(*shape).items() if k in ("x", "weight", "bias", "grad_y")}
    return torch_op(data, lambda x, weight, bias: torch.nn.functional.conv2d(x, weight, bias, padding=PADDING),
                    ("x", "weight", "bias"))


def cases(smoke: bool) -> list:
    shape = SMOKE if smoke else FULL
    impls = op_implementations(lambda: arrays(*shape), _minidcn, _torchvision, GRAD_OF,
                               torch_label="torchvision", backends=("numba",))
    impls["torch conv2d, same shape"] = lambda: _torch_conv2d(shape)
    batch, c_in, c_out, size = shape
    return [Case(f"deform_conv2d float32, B={batch}, C={c_in}->{c_out}, {size}x{size}, "
                 f"{KERNEL}x{KERNEL}, padding {PADDING}, with mask", impls, peer="torchvision",
                 skipped={"minidcn reference": "left out: NumPy takes about 8 s per fwd+bwd here"},
                 unchecked=("torch conv2d, same shape",),
                 ratios=(("minidcn numba", "torch conv2d, same shape"),),
                 footer=lambda: peak_memory_lines(32, 128, 128, 64))]
