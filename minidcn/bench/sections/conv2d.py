"""conv2d, float32, 3x3, padding 1: at the deform_conv2d shape (B=8, C=64->64, 64x64), at
B=8, C=64->64, 32x32, and a narrow layer, B=8, C=16->32, 64x64; beside torch's conv2d."""

from __future__ import annotations

from ..common import Case, op_implementations, require, rng_array

ORDER = 2
KERNEL, PADDING = 3, 1
SHAPES = [(8, 64, 64, 64), (8, 64, 64, 32), (8, 16, 32, 64)]  # batch, c_in, c_out, size
SMOKE = [(1, 3, 4, 5)]


def arrays(batch, c_in, c_out, size) -> dict:
    return dict(x=rng_array((batch, c_in, size, size), 0),
                weight=rng_array((c_out, c_in, KERNEL, KERNEL), 1, scale=0.05),
                bias=rng_array((c_out,), 2), grad_y=rng_array((batch, c_out, size, size), 3))


def _minidcn(F, x, weight, bias):
    return F.conv2d(x, weight, bias, padding=PADDING)


def _torch():
    torch = require("torch")

    return lambda x, weight, bias: torch.nn.functional.conv2d(x, weight, bias, padding=PADDING)


def cases(smoke: bool) -> list:
    return [Case(f"conv2d float32, B={b}, C={ci}->{co}, {s}x{s}, {KERNEL}x{KERNEL}, padding {PADDING}",
                 op_implementations(lambda shape=(b, ci, co, s): arrays(*shape), _minidcn, _torch,
                                    ("x", "weight", "bias")), peer="torch")
            for b, ci, co, s in (SMOKE if smoke else SHAPES)]
