"""group_norm, float32, input (8, 64, 64, 64), 32 groups, with affine weight and bias;
beside torch.nn.functional.group_norm."""

from __future__ import annotations

from ..common import Case, op_implementations, require, rng_array

ORDER = 3
SHAPE, GROUPS = (8, 64, 64, 64), 32
SMOKE_SHAPE, SMOKE_GROUPS = (2, 4, 3, 3), 2


def arrays(shape) -> dict:
    return dict(x=rng_array(shape, 0), weight=rng_array(shape[1:2], 1), bias=rng_array(shape[1:2], 2),
                grad_y=rng_array(shape, 3))


def cases(smoke: bool) -> list:
    shape, groups = (SMOKE_SHAPE, SMOKE_GROUPS) if smoke else (SHAPE, GROUPS)

    def torch_call():
        torch = require("torch")

        return lambda x, weight, bias: torch.nn.functional.group_norm(x, groups, weight, bias)

    impls = op_implementations(lambda: arrays(shape), lambda F, x, weight, bias: F.group_norm(x, groups, weight, bias),
                               torch_call, ("x", "weight", "bias"))
    return [Case(f"group_norm float32, input {shape}, {groups} groups", impls, peer="torch")]
