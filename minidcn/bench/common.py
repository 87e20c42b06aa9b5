"""What the benchmark's sections share: a ``Case`` to time, and the timed closures of an op.

A case names its implementations, each with a builder: a function without arguments that
runs in the implementation's own worker process, imports its library there, and returns a
``Timed``.  ``minidcn_op`` and ``torch_op`` build one for a single op applied to named
input arrays, differentiated for some of them against a fixed output gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Timed:
    """What a worker times: ``forward()`` (no graph), ``forward_backward()`` (graph and
    backward; for a training step, the whole optimiser step), and ``outputs()``, run once
    before timing: a dict of named NumPy arrays the runner compares across implementations."""

    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    outputs: Callable[[], dict]


@dataclass
class Case:
    """One table: ``title``; ``implementations`` {label: builder}; ``peer``, the label whose
    median time the speed-ups divide (None: no speed-up column); ``skipped`` {label: reason}
    for implementations left out on purpose; ``rtol``/``atol`` of the agreement check;
    ``unchecked``: labels timed for scale only (another op), left out of that check;
    ``ratios``: (numerator label, denominator label) pairs whose fwd+bwd median ratio is
    printed under the table; ``footer``: a function run in the runner after the table,
    returning extra lines."""

    title: str
    implementations: dict
    peer: str | None = None
    skipped: dict = field(default_factory=dict)
    rtol: float = 1e-3
    atol: float = 1e-3
    unchecked: tuple = ()
    ratios: tuple = ()
    footer: Callable[[], list] | None = None


def require(module: str):
    """Import ``module`` for a builder; any failure (not installed, or installed but broken,
    like a torchvision built for another torch) becomes an ImportError, which the worker
    reports as "unavailable"."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - a broken install is as absent as a missing one
        raise ImportError(f"{module} does not import: {type(error).__name__}: {error}") from error


def rng_array(shape, seed=0, scale=1.0) -> np.ndarray:
    """float32 standard normal numbers times ``scale``, from a seeded generator."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def off_the_grid(shape, seed=0, spread=2.0) -> np.ndarray:
    """float32 offsets of about ``spread`` pixels whose fractional part is in [0.25, 0.75].

    Bilinear sampling has a kink at every whole pixel; an offset within float32 round-off of
    one would send two implementations' gradients to different sides of it, and the agreement
    check would compare unlike things.  Offsets added to whole-pixel positions stay clear.
    """
    rng = np.random.default_rng(seed)
    whole = np.round(spread * rng.standard_normal(shape))
    return (whole + rng.uniform(0.25, 0.75, shape)).astype(np.float32)


def minidcn_op(backend_name: str, arrays: dict, call, grad_of) -> Timed:
    """minidcn's ``call(F, **tensors)`` on a host backend (F is ``minidcn.functional``).

    ``arrays`` holds the inputs by name and ``"grad_y"``, the gradient of the output;
    ``grad_of`` names the inputs whose gradients the backward computes.
    """
    import minidcn
    from minidcn import Tensor, functional as F

    grad_y = Tensor(arrays["grad_y"])
    tensors = {k: Tensor(v, requires_grad=k in grad_of) for k, v in arrays.items() if k != "grad_y"}

    def forward():
        with minidcn.no_grad(), minidcn.backend(backend_name):
            return call(F, **tensors)

    def forward_backward():
        for name in grad_of:
            tensors[name].grad = None
        with minidcn.backend(backend_name):
            y = call(F, **tensors)
            y.backward(grad_y)
        return y

    def outputs():
        y = forward_backward()
        return {"output": y.numpy(), **{f"grad of {k}": tensors[k].grad.numpy() for k in grad_of}}

    return Timed(forward, forward_backward, outputs)


def torch_op(arrays: dict, call, grad_of) -> Timed:
    """torch's ``call(**tensors)`` on the CPU, with the same arrays as ``minidcn_op``."""
    torch = require("torch")
    grad_y = torch.from_numpy(arrays["grad_y"])
    tensors = {k: torch.from_numpy(v).requires_grad_(k in grad_of)
               for k, v in arrays.items() if k != "grad_y"}

    def forward():
        with torch.no_grad():
            return call(**tensors)

    def forward_backward():
        for name in grad_of:
            tensors[name].grad = None
        y = call(**tensors)
        y.backward(grad_y)
        return y

    def outputs():
        y = forward_backward()
        return {"output": y.detach().numpy(), **{f"grad of {k}": tensors[k].grad.numpy() for k in grad_of}}

    return Timed(forward, forward_backward, outputs)


def op_implementations(arrays, minidcn_call, torch_call, grad_of, torch_label="torch",
                       backends=("numba", "reference")) -> dict:
    """{label: builder} for one op: minidcn on ``backends``, and ``torch_call`` (a function
    that imports what it needs and returns the function of the tensors) as ``torch_label``.
    ``arrays`` is a function returning the arrays, so that only the worker makes them."""
    impls = {f"minidcn {b}": (lambda b=b: minidcn_op(b, arrays(), minidcn_call, grad_of))
             for b in backends}
    impls[torch_label] = lambda: torch_op(arrays(), torch_call(), grad_of)
    return impls
