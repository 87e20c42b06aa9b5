"""Small helpers for running one computation on a chosen backend."""

from __future__ import annotations

import contextlib

import numpy as np

import minidcn
from minidcn import Tensor


@contextlib.contextmanager
def on(backend_name: str):
    """Run the block on ``backend_name``; yields the device tensors should live on."""
    host = "numba" if backend_name == "cuda" else backend_name
    with minidcn.backend(host):
        yield "cuda" if backend_name == "cuda" else "cpu"


def tensors(device, *arrays, requires_grad=False):
    """float64 Tensors on ``device`` (None stays None)."""
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        t = Tensor(np.asarray(a, dtype=np.float64), dtype=np.float64).to(device)
        out.append(t.detach().requires_grad_(requires_grad))
    return out


def host(t) -> np.ndarray:
    """A Tensor's values as a float64 host array."""
    return np.asarray(t.to("cpu").numpy(), dtype=np.float64)


def run(backend_name, fn, *arrays, grad_seed=0):
    """Forward and backward of ``fn(*tensors)`` on a backend.

    Returns (output, [grad of each non-None input]) as host float64 arrays, the backward
    seeded with a fixed random output gradient.
    """
    with on(backend_name) as device:
        ts = tensors(device, *arrays, requires_grad=True)
        out = fn(*ts)
        g = np.random.default_rng(grad_seed).standard_normal(out.shape)
        out.backward(Tensor(g, dtype=out.dtype).to(device))
        grads = [host(t.grad) if t is not None and t.grad is not None else None for t in ts]
        return host(out), grads


def gradcheck_on(backend_name, fn, *arrays, **kwargs):
    """minidcn.gradcheck of ``fn`` with every non-None array as a checked input."""
    with on(backend_name) as device:
        ts = tensors(device, *arrays, requires_grad=True)
        return minidcn.gradcheck(fn, ts, **kwargs)
