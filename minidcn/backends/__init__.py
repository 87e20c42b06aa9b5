"""Kernel backends: the same kernels written three ways, under the same names.

* ``reference`` (``backends/reference``): pure NumPy, written to be read beside the formula.
  It is the oracle every other backend is tested against.
* ``numba`` (``backends/numba_cpu``): ``@njit`` loops; the default for host tensors.
* ``cuda`` (``backends/cuda``): ``numba.cuda`` kernels; always used for device tensors.  They
  take and return the device arrays of ``minidcn.device``, the runtime one layer below.

Each backend package exports the same function names with the same argument order
(``conv2d_forward``, ``deform_conv2d_backward``, ...), so ``kernels(device)`` returns a
namespace and the functional layer calls ``kernels(x.device).conv2d_forward(...)``
whichever backend is active.

Choose the host backend with ``set_backend("reference")`` or, for a block of code,
``with backend("reference"): ...``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

HOST_BACKENDS = {"reference": "reference", "numba": "numba_cpu"}
DEFAULT_BACKEND = "numba"

_state = threading.local()


def get_backend() -> str:
    """The name of the active host backend ("reference" or "numba")."""
    return getattr(_state, "name", DEFAULT_BACKEND)


def set_backend(name: str) -> None:
    """Select the host backend for every op that follows (in this thread)."""
    if name not in HOST_BACKENDS:
        raise ValueError(
            f"set_backend: name must be one of {sorted(HOST_BACKENDS)}, got {name!r} "
            "(device tensors always use the 'cuda' backend)"
        )
    _state.name = name


@contextlib.contextmanager
def backend(name: str):
    """``with backend("reference"): ...`` runs the block on another host backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def kernels(device: str = "cpu"):
    """The kernel namespace for tensors on ``device`` under the active host backend."""
    if device == "cuda":
        return importlib.import_module(f"{__name__}.cuda")
    return importlib.import_module(f"{__name__}.{HOST_BACKENDS[get_backend()]}")
