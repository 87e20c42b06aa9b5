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

from collections.abc import Iterable

import numpy as np

from .functional._validate import check_float, check_int
from .grad_mode import no_grad
from .tensor import Tensor


MAX_DIRECTIONS = 2**16  # random directions per input: more is a mistake, not a stricter check


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with its finite-difference estimate."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, *, max_entries=2048,
              directions=16, seed=0, names=None) -> bool:
    """Check the gradients of ``fn`` at ``inputs`` by central differences; True if they agree.

    Args:
        fn: called as ``fn(*inputs)``; returns a Tensor or a tuple of Tensors.
        inputs: a sequence of arguments.  Tensors with ``requires_grad=True`` are checked
            and must be float64; anything else is passed through unchanged.
        eps: the finite-difference step, finite and > 0.
        atol, rtol: the tolerance, ``|analytic - numeric| <= atol + rtol * |numeric|``,
            finite and >= 0.
        max_entries: int >= 0; inputs with more elements are checked along random
            directions.
        directions: int in [0, 2**16], how many random directions for those large inputs
            (>= 1 if there is one).
        seed: int >= 0, seeds the output projection and the directions (the check is
            repeatable).
        names: optional names for the inputs, used in the failure report.

    Raises:
        GradcheckError: with the input, the worst index, the analytic and numeric values.
        TypeError: if a checked input is not float64, ``fn`` returns no Tensor, or an
            argument has the wrong type.
        ValueError: for arguments that would divide by zero or check nothing: eps must be
            finite and > 0, atol and rtol finite and >= 0, max_entries >= 0, directions in
            [0, 2**16], some input must be a Tensor with requires_grad=True and at least
            one element, and an input larger than ``max_entries`` needs ``directions >= 1``.
    """
    inputs, names = _arguments(fn, inputs, names)
    eps = check_float("gradcheck", "eps", eps)
    if eps <= 0.0:
        raise ValueError(f"gradcheck: eps must be finite and > 0 (the differences divide by "
                         f"2 eps), got {eps}")
    atol = check_float("gradcheck", "atol", atol, 0.0)
    rtol = check_float("gradcheck", "rtol", rtol, 0.0)
    max_entries = check_int("gradcheck", "max_entries", max_entries, 0)
    directions = check_int("gradcheck", "directions", directions, 0)
    if directions > MAX_DIRECTIONS:
        raise ValueError(f"gradcheck: directions must be <= {MAX_DIRECTIONS} (each costs two "
                         f"calls of fn), got {directions}")
    seed = check_int("gradcheck", "seed", seed, 0)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input is a Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: {names[i]} must be float64, got {inputs[i].dtype}")
        size = inputs[i].numel()
        if size > max_entries and directions == 0:
            raise ValueError(
                f"gradcheck: {names[i]} has {size} elements, more than max_entries="
                f"{max_entries}, so it is checked along random directions, but directions=0 "
                f"would check none; give directions >= 1 or max_entries >= {size}")
    if all(inputs[i].numel() == 0 for i in checked):
        raise ValueError("gradcheck: every input with requires_grad=True is empty (0 elements), "
                         "so there is nothing to check")
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
            num, ana = [], []
            for _ in range(directions):  # one at a time: memory stays one input's size
                v = rng.standard_normal(base.shape)
                v /= np.sqrt(np.sum(v**2))
                num.append((shifted(eps * v) - shifted(-eps * v)) / (2 * eps))
                ana.append(np.sum(analytic[i] * v))
            num, ana, where = np.array(num), np.array(ana), "random direction"
        _compare(names[i], inputs[i].shape, where, ana, num, atol, rtol)
    return True


def _arguments(fn, inputs, names) -> tuple[list, list[str]]:
    """``inputs`` as a list and one name per input; TypeError or ValueError otherwise."""
    if not callable(fn):
        raise TypeError(f"gradcheck: fn must be callable, got {type(fn).__name__}")
    if isinstance(inputs, (Tensor, str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"gradcheck: inputs must be a sequence of fn's arguments, got "
                        f"{type(inputs).__name__}; wrap a single Tensor in a list")
    inputs = list(inputs)
    if names is None:
        return inputs, [f"input {i}" for i in range(len(inputs))]
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"gradcheck: names must be a sequence of str, got "
                        f"{type(names).__name__}")
    names = list(names)
    if len(names) != len(inputs):
        raise ValueError(f"gradcheck: names must give one name per input, got {len(names)} "
                         f"names for {len(inputs)} inputs")
    return inputs, [str(n) for n in names]


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
