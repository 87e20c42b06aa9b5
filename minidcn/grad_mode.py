"""Switching gradient recording off: ``with minidcn.no_grad(): ...``."""

from __future__ import annotations

import functools
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside a :class:`no_grad` block (per thread)."""
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager (and decorator) in which ops record no graph.

    Use it for evaluation, for optimiser updates and for finite differences: results come
    out with ``requires_grad=False`` and no memory is held for a backward pass.
    """

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.enabled = False
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper
