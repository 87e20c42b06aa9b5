"""Benchmark section ``norm``: group_norm, float32, input (8, 64, 64, 64), 32 groups.

Times the public op (validation, kernels and autograd included) forward, and forward plus
backward (input, weight and bias gradients), on the reference and numba backends, beside
``torch.nn.functional.group_norm`` on the CPU when torch is installed.  The issue's target
is numba within 1.5x of torch for forward+backward; the last line prints the ratio.
"""

from __future__ import annotations

from .. import functional as F
from ..backends import backend
from ..tensor import Tensor
from .timing import best_over_rounds, optional, print_table, rng_array

SHAPE = (8, 64, 64, 64)
GROUPS = 32
TARGET = 1.5  # numba fwd+bwd time / torch fwd+bwd time
ROUNDS = 3


def _minidcn_ops(host_backend, arrays):
    """(forward, forward+backward) closures of minidcn's group_norm on a host backend."""
    x, weight, bias, grad = (Tensor(a) for a in arrays)
    for t in (x, weight, bias):
        t.requires_grad_(True)

    def forward():
        with backend(host_backend):
            return F.group_norm(x, GROUPS, weight, bias)

    def forward_backward():
        for t in (x, weight, bias):
            t.grad = None
        with backend(host_backend):
            forward().backward(grad)

    return forward, forward_backward


def _torch_ops(torch, arrays):
    x, weight, bias, grad = (torch.from_numpy(a) for a in arrays)
    for t in (x, weight, bias):
        t.requires_grad_(True)

    def forward():
        return torch.nn.functional.group_norm(x, GROUPS, weight, bias)

    def forward_backward():
        for t in (x, weight, bias):
            t.grad = None
        forward().backward(grad)

    return forward, forward_backward


def run(repeat: int = 5) -> None:
    channels = SHAPE[1]
    arrays = (rng_array(SHAPE, 0), rng_array((channels,), 1), rng_array((channels,), 2),
              rng_array(SHAPE, 3))
    ops = {f"minidcn {name}": _minidcn_ops(name, arrays) for name in ("reference", "numba")}
    torch = optional("torch")
    peer = "torch.nn.functional.group_norm"
    if torch is not None:
        ops[peer] = _torch_ops(torch, arrays)
    best = best_over_rounds(ops, repeat, ROUNDS)
    rows = [(name, *times) for name, times in best.items()]
    print_table(f"group_norm float32 {SHAPE}, {GROUPS} groups (best of {ROUNDS} x {repeat})",
                rows, baseline=peer if torch is not None else None)
    if torch is not None:
        ratio = best["minidcn numba"][1] / best[peer][1]
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(f"  numba fwd+bwd time / torch fwd+bwd time = {ratio:.2f} "
              f"(target <= {TARGET}: {verdict})")
