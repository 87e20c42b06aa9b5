"""Optimisers: SGD and Adam, with torch's parameter groups and torch's update rules.

An optimiser holds ``param_groups``: a list of dicts, each with its ``"params"`` and its own
hyperparameters (``"lr"``, ``"momentum"``, ...); a group that does not name one takes the
optimiser's default.  ``step()`` updates every parameter that has a gradient, ``zero_grad()``
clears the gradients.

Updates replace ``p.data`` by a new array computed with plain arithmetic
(``p.data = p.data - lr * g``), and the running state (momentum, Adam's moments) is created
with :func:`minidcn.arrays.zeros` beside the parameter: the same code updates host
parameters and device (cuda) parameters.

The DCN papers train the layers that predict offsets with a smaller learning rate.
:func:`param_groups` builds such groups from the ``lr_mult`` of each Parameter::

    opt = minidcn.optim.SGD(minidcn.optim.param_groups(model, lr=0.01), lr=0.01, momentum=0.9)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .arrays import zeros
from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "param_groups"]


def _real(owner: str, name: str, value, low: float, high: float | None = None,
          high_open: bool = False, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high]; ``low_open`` / ``high_open`` exclude an end."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        wanted = (f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                  if high is not None else f"a finite number {'>' if low_open else '>='} {low}")
        raise ValueError(f"{owner}: {name} must be {wanted}, got {value}")
    return value


class Optimizer:
    """Base class: parameter groups, ``zero_grad()`` and the loop of ``step()``.

    ``params`` is an iterable of Tensors (one group) or of dicts ``{"params": [...], "lr": ...}``
    (one group each; keys a group leaves out take the value from ``defaults``).  A parameter
    may appear only once across all groups.  Subclasses define ``_check_group`` (validate a
    group's hyperparameters) and ``_update(p, grad, state, group)`` (return the new data).
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict = {}
        name = type(self).__name__
        if isinstance(params, (Tensor, dict)):
            raise TypeError(
                f"{name}: params must be an iterable of Tensors or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list"
            )
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Tensors or of dicts, got "
                            f"{type(params).__name__}") from None
        if not groups:
            raise ValueError(f"{name}: params must hold at least one Tensor or group, got an "
                             "empty parameter list")
        if not all(isinstance(g, dict) for g in groups):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add one group: its ``params`` plus any hyperparameters that override the defaults."""
        name = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{name}: a parameter group needs a 'params' entry, got keys "
                             f"{sorted(group)}")
        unknown = sorted(set(group) - {"params"} - set(self.defaults))
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {unknown} in a parameter group; "
                            f"known: {sorted(self.defaults)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError(f"{name}: a parameter group's params must hold at least one "
                             "Tensor, got an empty parameter list")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: params[{i}] must be a Tensor, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: params[{i}] is not a leaf tensor (it was computed by "
                                 "an op); optimise the tensors it came from")
            if id(p) in seen:
                raise ValueError(f"{name}: params[{i}] of shape {p.shape} appears more than once "
                                 "(within a group or across groups)")
            seen.add(id(p))
        full = {**self.defaults, **group, "params": params}
        self._check_group(full)
        self.param_groups.append(full)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``p.grad = None``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that received a gradient since the last ``zero_grad()``.

        The hyperparameters are checked again first: a schedule (or a caller) may have
        changed ``group["lr"]`` and the rest since the optimiser was built.
        """
        name = type(self).__name__
        for group in self.param_groups:
            self._check_group(group)
        pending = [(p, group) for group in self.param_groups for p in group["params"]
                   if p.grad is not None]
        for p, _ in pending:  # everything is checked before any parameter changes
            if p.grad.shape != p.shape or p.grad.device != p.device:
                raise ValueError(
                    f"{name}.step: a gradient of shape {p.grad.shape} on "
                    f"{p.grad.device} does not fit its parameter {p.shape} on {p.device}"
                )
            for key, value in self.state.get(p, {}).items():
                if isinstance(value, numbers.Number):  # a step count
                    continue
                where = "cpu" if isinstance(value, np.ndarray) else "cuda"
                if tuple(np.shape(value)) != p.shape or where != p.device:
                    raise ValueError(
                        f"{name}.step: the state {key!r} of shape {tuple(np.shape(value))} on "
                        f"{where} does not fit its parameter {p.shape} on {p.device} (the "
                        "parameter was reshaped or moved after a step; build a new optimiser)"
                    )
        for p, group in pending:
            state = self.state.setdefault(p, {})
            updated = self._update(p.data, p.grad.data, state, group)
            # a float64 hyperparameter (lr = np.float64(...)) must not promote the parameter
            p.data = updated if updated.dtype == p.dtype else updated.astype(p.dtype)

    def _check_group(self, group: dict) -> None:  # pragma: no cover - documented interface
        raise NotImplementedError

    def _update(self, p, grad, state: dict, group: dict):  # pragma: no cover - interface
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov.

    torch's rule, for gradient g of parameter p (λ weight decay, μ momentum, τ dampening)::

        g ← g + λ p
        b ← g                          on the first step
        b ← μ b + (1 - τ) g            afterwards
        g ← g + μ b  (Nesterov)   or   g ← b
        p ← p - lr g

    Ranges (as torch checks them): lr >= 0, momentum >= 0, weight_decay >= 0; dampening
    in [0, 1] (torch does not check it); Nesterov needs momentum > 0 and dampening = 0.
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        for key in ("lr", "momentum", "weight_decay"):
            group[key] = _real("SGD", key, group[key], 0.0)
        group["dampening"] = _real("SGD", "dampening", group["dampening"], 0.0, 1.0)
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be True or False, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: nesterov needs momentum > 0 and dampening = 0, got momentum "
                f"{group['momentum']} and dampening {group['dampening']}"
            )

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        mu = group["momentum"]
        if mu:
            if "momentum_buffer" not in state:
                buf = g.copy()
            else:
                buf = mu * state["momentum_buffer"] + (1 - group["dampening"]) * g
            state["momentum_buffer"] = buf
            g = g + mu * buf if group["nesterov"] else buf
        return p - group["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), with torch's bias corrections and L2 weight decay.

    torch's rule at step t, for gradient g of parameter p (λ weight decay)::

        g ← g + λ p
        m ← β1 m + (1 - β1) g          (computed as m + (1 - β1)(g - m), as torch's lerp)
        v ← β2 v + (1 - β2) g²
        p ← p - (lr / (1 - β1^t)) · m / (√v / √(1 - β2^t) + eps)

    m and v start at zero, on the parameter's device.

    Ranges (torch's, except eps): lr >= 0, betas each in [0, 1), weight_decay >= 0, and
    eps > 0: torch also accepts eps = 0, which turns a parameter whose gradient is zero
    into NaN (0 / 0).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        for key in ("lr", "weight_decay"):
            group[key] = _real("Adam", key, group[key], 0.0)
        group["eps"] = _real("Adam", "eps", group["eps"], 0.0, low_open=True)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(_real("Adam", f"betas[{i}]", b, 0.0, 1.0, high_open=True)
                               for i, b in enumerate(betas))

    def _update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        if "step" not in state:
            state.update(step=0, exp_avg=zeros(p.shape, p.dtype, like=p),
                         exp_avg_sq=zeros(p.shape, p.dtype, like=p))
        state["step"] += 1
        t = state["step"]
        m = state["exp_avg"] + (1 - beta1) * (g - state["exp_avg"])
        v = beta2 * state["exp_avg_sq"] + (1 - beta2) * (g * g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        step_size = group["lr"] / (1 - beta1**t)
        denom = np.sqrt(v) / math.sqrt(1 - beta2**t) + group["eps"]
        return p - step_size * (m / denom)


def param_groups(module, lr, **defaults) -> list[dict]:
    """One parameter group per distinct ``lr_mult`` of ``module``'s parameters.

    Each group gets ``lr * lr_mult`` and the other ``defaults`` (momentum, weight_decay,
    ...).  Groups come in the order their first parameter appears in
    ``module.parameters()``.  Pass the result to an optimiser::

        SGD(param_groups(model, lr=0.1, momentum=0.9), lr=0.1)
    """
    lr = _real("param_groups", "lr", lr, 0.0)
    by_mult: dict[float, list] = {}
    for p in module.parameters():
        by_mult.setdefault(float(getattr(p, "lr_mult", 1.0)), []).append(p)
    if not by_mult:
        raise ValueError(f"param_groups: {type(module).__name__} has no parameters")
    for mult in by_mult:
        _real("param_groups", "a parameter's lr_mult", mult, 0.0)
    return [{"params": ps, "lr": lr * mult, **defaults} for mult, ps in by_mult.items()]
