"""Module and Parameter: the containers layers are built from, as in torch.nn.

A Module keeps its Parameters, its sub-Modules and its buffers (non-learned state such as
BatchNorm's running statistics) in three ordered dicts filled by attribute assignment.
``state_dict()`` flattens them to ``{"layer.weight": ndarray, ...}``; ``save`` and
``load_state_dict`` store that in an ``.npz`` file, read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..arrays import to_device_of
from ..tensor import FLOAT_DTYPES, Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as learnable (requires_grad=True by default).

    ``lr_mult`` scales the learning rate this parameter gets when an optimiser's parameter
    groups are built with :func:`minidcn.optim.param_groups` (the DCN papers train the
    offset predictors with a smaller rate).
    """

    def __init__(self, data, requires_grad: bool = True, dtype=None, lr_mult: float = 1.0):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)
        self.lr_mult = float(lr_mult)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of every layer: override ``forward``; call the module to run it."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() first")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # assigning to a buffer keeps it a buffer, as in torch
            return
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        if isinstance(value, (Parameter, Module)):
            self.__dict__.pop(name, None)  # else a plain attribute would shadow it
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for store in ("_parameters", "_modules", "_buffers"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` (None, an ndarray or a device array) as state saved in state_dict."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}{name}.")

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        seen = set()
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield prefix + name, p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None:
                    yield prefix + name, b

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str | None = None, dtype=None) -> "Module":
        """Move parameters and float buffers in place (parameters keep their identity).

        Integer buffers (counters such as BatchNorm's ``num_batches_tracked``) are
        bookkeeping, not data: they stay host integers whatever the device or dtype.
        """
        for p in self.parameters():
            moved = Tensor(p.data, dtype=dtype) if dtype is not None else p
            p.data = moved.to(device).data if device is not None else moved.data
            p.grad = None
        for m in self.modules():
            for name, b in list(m._buffers.items()):
                if b is not None and np.dtype(b.dtype) in FLOAT_DTYPES:
                    t = Tensor(b, dtype=dtype) if dtype is not None else Tensor._from_array(b)
                    m._buffers[name] = t.to(device).data if device is not None else t.data
        return self

    def double(self) -> "Module":
        return self.to(dtype=np.float64)

    def float(self) -> "Module":
        return self.to(dtype=np.float32)

    # ------------------------------------------------------------------ running
    def forward(self, *args, **kwargs):  # pragma: no cover - documented interface
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers as host arrays (copies), keyed by dotted names."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = Tensor._from_array(p.data).to("cpu").numpy().copy()
        for name, b in self.named_buffers():
            state[name] = np.array(b.to_host() if hasattr(b, "to_host") else b, copy=True)
        return state

    def save(self, path) -> None:
        """Write ``state_dict()`` to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load_state_dict(self, state) -> None:
        """Load from a dict of arrays or an ``.npz`` path.

        Every key must be present with exactly the expected shape, and no key may be extra:
        a ValueError names the key otherwise.
        """
        if isinstance(state, (str, os.PathLike)):
            with np.load(state, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for key, value in own.items():
            arr = np.asarray(state[key])
            if arr.shape != value.shape:
                raise ValueError(
                    f"load_state_dict: key {key!r} has shape {arr.shape}, expected {value.shape}"
                )
        params = dict(self.named_parameters())
        for key, value in own.items():
            arr = np.asarray(state[key], dtype=value.dtype)
            if key in params:
                p = params[key]
                p.data = to_device_of(arr.copy(), p.data)
            else:
                owner, name = self._owner_of(key)
                current = owner._buffers[name]
                owner._buffers[name] = to_device_of(arr.copy(), current)

    def _owner_of(self, key: str):
        *path, name = key.split(".")
        m = self
        for part in path:
            m = m._modules[part]
        return m, name

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"
