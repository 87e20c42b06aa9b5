"""Switching gradient recording off: ``with minidcn.no_grad(): ...``."""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside a :func:`no_grad` block (per thread)."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager (and decorator, ``@no_grad()``) in which ops record no graph.

    Use it for evaluation, for optimiser updates and for finite differences: results come
    out with ``requires_grad=False`` and no memory is held for a backward pass.
    """
    previous, _state.enabled = is_grad_enabled(), False
    try:
        yield
    finally:
        _state.enabled = previous
