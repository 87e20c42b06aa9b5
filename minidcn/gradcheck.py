"""Finite-difference gradient checking: is backward the derivative of forward?

``gradcheck(fn, inputs)`` reduces the outputs of ``fn`` to one number with a fixed random
projection, L = Σ_k <u_k, fn(inputs)_k>, so one backward pass gives dL/dx for every input.
It then estimates the same derivatives by central differences,

    dL/dx_j ≈ (L(x + ε e_j) - L(x - ε e_j)) / 2ε,

which is exact up to O(ε²) for smooth functions.  Small inputs are checked entry by entry;
inputs with more than ``max_entries`` elements are checked along ``directions`` random unit
vectors v instead, comparing <dL/dx, v> with (L(x + εv) - L(x - εv)) / 2ε.  An entry passes
when |analytic - numeric| <= atol + rtol |numeric|.

Everything runs in float64: in float32, the rounding error of L (about 1e-7 |L|) divided by
2ε swamps the derivative.  A point where the function has a kink (relu at 0, bilinear
sampling at an integer coordinate) has no derivative to check, so draw inputs away from them.

Use it on your own ops::

    x = minidcn.Tensor(np.random.randn(2, 3), requires_grad=True, dtype=np.float64)
    minidcn.gradcheck(lambda t: (t * t).sum(), [x])
"""

from __future__ import annotations

import numpy as np

from .grad_mode import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with its finite-difference estimate."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, *, max_entries=2048,
              directions=16, seed=0, names=None) -> bool:
    """Check the gradients of ``fn`` at ``inputs`` by central differences; True if they agree.

    Args:
        fn: called as ``fn(*inputs)``; returns a Tensor or a tuple of Tensors.
        inputs: a sequence of arguments.  Tensors with ``requires_grad=True`` are checked
            and must be float64; anything else is passed through unchanged.
        eps: the finite-difference step.
        atol, rtol: the tolerance, ``|analytic - numeric| <= atol + rtol * |numeric|``.
        max_entries: inputs with more elements are checked along random directions.
        directions: how many random directions for those large inputs.
        seed: seeds the output projection and the directions (the check is repeatable).
        names: optional names for the inputs, used in the failure report.

    Raises:
        GradcheckError: with the input, the worst index, the analytic and numeric values.
        TypeError: if a checked input is not float64, or ``fn`` returns no Tensor.
    """
    inputs = list(inputs)
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input is a Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: {names[i]} must be float64, got {inputs[i].dtype}")
    rng = np.random.default_rng(seed)

    outputs = _as_outputs(fn(*inputs))
    weights = [rng.standard_normal(o.shape) for o in outputs]

    def loss(args) -> float:
        with no_grad():
            outs = _as_outputs(fn(*args))
        return float(sum(np.sum(w * _host(o)) for w, o in zip(weights, outs)))

    saved = {i: inputs[i].grad for i in checked}
    for i in checked:
        inputs[i].grad = None
    try:
        total = sum(_project(o, w) for o, w in zip(outputs, weights))
        total.backward()
        analytic = {
            i: _host(inputs[i].grad) if inputs[i].grad is not None
            else np.zeros(inputs[i].shape) for i in checked
        }
    finally:
        for i in checked:
            inputs[i].grad = saved[i]

    for i in checked:
        base = _host(inputs[i]).astype(np.float64)
        device = inputs[i].device

        def shifted(delta, i=i, base=base, device=device):
            args = list(inputs)
            args[i] = Tensor(base + delta, dtype=np.float64).to(device)
            return loss(args)

        if base.size <= max_entries:
            num, ana, where = _entrywise(shifted, base, eps), analytic[i], "index"
        else:
            vs = rng.standard_normal((directions,) + base.shape)
            vs /= np.sqrt((vs**2).sum(axis=tuple(range(1, vs.ndim)), keepdims=True))
            num = np.array([(shifted(eps * v) - shifted(-eps * v)) / (2 * eps) for v in vs])
            ana = np.array([np.sum(analytic[i] * v) for v in vs])
            where = "random direction"
        _compare(names[i], inputs[i].shape, where, ana, num, atol, rtol)
    return True


def _as_outputs(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not outs or not all(isinstance(o, Tensor) for o in outs):
        raise TypeError("gradcheck: fn must return a Tensor or a tuple of Tensors")
    return outs


def _host(t: Tensor) -> np.ndarray:
    return np.asarray(t.to("cpu").numpy(), dtype=np.float64)


def _project(out: Tensor, weight: np.ndarray) -> Tensor:
    return (out * Tensor(weight, dtype=out.dtype).to(out.device)).sum()


def _entrywise(shifted, base, eps) -> np.ndarray:
    num = np.zeros(base.shape)
    for j in np.ndindex(base.shape):
        step = np.zeros(base.shape)
        step[j] = eps
        num[j] = (shifted(step) - shifted(-step)) / (2 * eps)
    return num


def _compare(name, shape, where, analytic, numeric, atol, rtol) -> None:
    excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    bad = ~(excess <= 0)  # NaN counts as a failure
    if not bad.any():
        return
    worst = np.unravel_index(int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess))),
                             excess.shape)
    pos = int(worst[0]) if len(worst) == 1 else tuple(int(k) for k in worst)
    raise GradcheckError(
        f"gradcheck failed for {name} of shape {shape}: {int(bad.sum())} of {bad.size} "
        f"{where} checks disagree; worst at {where} {pos}: analytic {float(analytic[worst])!r}, "
        f"numeric {float(numeric[worst])!r} (tolerance {atol} + {rtol} * |numeric|)"
    )
