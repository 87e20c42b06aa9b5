"""Module and Parameter: the containers layers are built from, as in torch.nn.

A Module keeps its Parameters, its sub-Modules and its buffers (non-learned state such as
BatchNorm's running statistics) in three ordered dicts filled by attribute assignment.
``state_dict()`` flattens them to ``{"layer.weight": ndarray, ...}``; ``save`` and
``load_state_dict`` store that in an ``.npz`` file, read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import errno
import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..arrays import to_device_of
from ..tensor import FLOAT_DTYPES, Tensor


_NPZ = "expected an .npz archive written by Module.save"


class StateFileNotFoundError(FileNotFoundError, ValueError):
    """No file at the path given to load_state_dict.

    A FileNotFoundError, as Python's own file functions raise (``except FileNotFoundError``
    keeps working), and a ValueError, as every other refusal of a bad argument here.
    """


def _state_path(fn: str, name: str, path) -> str:
    """A str path from a str or os.PathLike; anything else (bytes included) is a TypeError."""
    fspath = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(fspath, str):
        raise TypeError(f"{fn}: {name} must be a path as a str or os.PathLike (bytes paths are "
                        f"not accepted: decode with os.fsdecode), got {type(path).__name__} "
                        f"{path!r}")
    return fspath


def _read_npz(path: str) -> dict:
    """The arrays of an .npz file, read without unpickling; ValueError naming what is wrong."""
    fn = "load_state_dict"
    if os.path.isdir(path):
        raise ValueError(f"{fn}: {path!r} is a directory, {_NPZ}")
    if not os.path.exists(path):
        raise StateFileNotFoundError(errno.ENOENT, f"{fn}: no such file ({_NPZ})", path)
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise ValueError(f"{fn}: {path!r} is empty (0 bytes), {_NPZ}")
    if head == b"\x93NUMPY":
        raise ValueError(f"{fn}: {path!r} is an .npy file (one unnamed array), {_NPZ}")
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (or an empty one)
        raise ValueError(f"{fn}: {path!r} is not an .npz archive (it starts with "
                         f"{head[:4]!r}), {_NPZ}")
    state, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                state[key] = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if key is not None and "allow_pickle" in str(err):
            raise ValueError(f"{fn}: key {key!r} in {path!r} holds Python objects (pickled "
                             "data), which are never unpickled; expected a numeric array"
                             ) from None
        part = f"key {key!r} in {path!r}" if key is not None else repr(path)
        raise ValueError(f"{fn}: {part} cannot be read ({type(err).__name__}: {err}), "
                         f"{_NPZ}") from None
    return state


def _converted(key: str, where: str, value, like: np.ndarray) -> np.ndarray:
    """``value`` as a new host array of ``like``'s shape and dtype, converted without loss."""
    fn = f"load_state_dict: key {key!r}{where}"
    if isinstance(value, Tensor):
        value = value.to("cpu").numpy()
    elif hasattr(value, "to_host"):
        value = value.to_host()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn} is not an array ({err})") from None
    target = like.dtype
    if arr.dtype.kind not in "biuf":  # a float for an integer buffer must be whole (below)
        got = f"dtype {arr.dtype}" if arr.dtype != object else type(value).__name__
        lost = " (the imaginary part would be lost)" if arr.dtype.kind == "c" else ""
        raise TypeError(f"{fn} has {got}{lost}, expected real numbers (bool, int or float) "
                        f"for {target}")
    if arr.shape != like.shape:
        raise ValueError(f"{fn} has shape {arr.shape}, expected {like.shape}")
    if target.kind == "f":
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the key
            out = arr.astype(target)
        overflow = np.isfinite(arr) & ~np.isfinite(out)
        if overflow.any():
            raise ValueError(f"{fn} holds {arr[overflow][0]}, which overflows {target}")
        return out
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.trunc(arr))
        if bad.any():
            raise ValueError(f"{fn} holds {arr[bad][0]}, expected whole numbers for {target}")
    info = np.iinfo(target)
    if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise ValueError(f"{fn} holds values in [{arr.min()}, {arr.max()}], outside {target}'s "
                         f"range [{info.min}, {info.max}]")
    return arr.astype(target)


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
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.train: mode must be a bool, got "
                            f"{type(mode).__name__} {mode!r}")
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
        """Write ``state_dict()`` to the ``.npz`` file ``path`` (a str or os.PathLike).

        The file gets exactly that name (``numpy.savez`` would append ``.npz`` to a name
        without it, and loading the same name would then find no file).
        """
        path = _state_path("save", "path", path)
        if os.path.isdir(path):
            raise ValueError(f"save: path {path!r} is a directory, expected a file name")
        with open(path, "wb") as f:
            np.savez(f, **self.state_dict())

    def load_state_dict(self, state) -> None:
        """Load from a mapping of arrays or an ``.npz`` file written by :meth:`save`.

        ``state`` is a dict (any Mapping) of arrays, or a path as a str or os.PathLike
        (a bytes path is a TypeError: decode it with ``os.fsdecode``).  A file is read with
        ``allow_pickle=False``: an entry holding Python objects is refused, never unpickled.
        Every key must be present with exactly the expected shape and no key may be extra.
        Values are converted to the parameter's or buffer's dtype only when nothing is lost:
        float parameters take bool, int or float numbers (not complex, text, objects, or a
        value that overflows float32); integer buffers take whole numbers that fit.  A layer may refuse
        values its forward cannot use (BatchNorm2d: a negative ``num_batches_tracked`` or
        ``running_var``).  Every error names the key (and the file); nothing is loaded
        unless every entry is valid.  A missing file raises :class:`StateFileNotFoundError`,
        both a FileNotFoundError and a ValueError.
        """
        where = ""
        if isinstance(state, (str, bytes, os.PathLike)):
            path = _state_path("load_state_dict", "state", state)
            state, where = _read_npz(path), f" in {path!r}"
        elif not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: state must be a dict of arrays or a path (str or "
                            f"os.PathLike) to an .npz file, got {type(state).__name__}")
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}{where}"
            )
        loaded = {}
        for key, value in own.items():
            arr = _converted(key, where, state[key], value)
            owner, name = self._owner_of(key)
            problem = owner._state_problem(name, arr)
            if problem:
                raise ValueError(f"load_state_dict: key {key!r}{where} {problem}")
            loaded[key] = arr
        params = dict(self.named_parameters())
        for key, arr in loaded.items():
            if key in params:
                p = params[key]
                p.data = to_device_of(arr, p.data)
            else:
                owner, name = self._owner_of(key)
                owner._buffers[name] = to_device_of(arr, owner._buffers[name])

    def _state_problem(self, name: str, value: np.ndarray) -> str | None:
        """Override to refuse a loaded value of parameter or buffer ``name``: return what is
        wrong ("must be >= 0, got -1"), or None.  ``value`` already has the right dtype."""
        return None

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
