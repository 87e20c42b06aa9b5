"""Parameter initialisation, torch's defaults, drawn from a seedable generator.

torch initialises the weights of Linear and Conv2d with kaiming_uniform(a=√5), which works
out to U(-1/√fan_in, 1/√fan_in), and their biases with the same bound.  Every layer takes
``generator=`` (a ``numpy.random.Generator``); without one it draws from a module-level
generator that ``minidcn.manual_seed(seed)`` resets, so whole runs are reproducible.
"""

from __future__ import annotations

import numpy as np

_default = {"rng": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    """Reset the generator that layers use when none is passed."""
    _default["rng"] = np.random.default_rng(seed)


def generator(rng=None) -> np.random.Generator:
    if rng is None:
        return _default["rng"]
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def uniform(shape, bound, rng=None, dtype=np.float32) -> np.ndarray:
    """U(-bound, bound) samples of ``shape``."""
    return generator(rng).uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_uniform_default(shape, fan_in, rng=None, dtype=np.float32) -> np.ndarray:
    """torch's default weight init for Linear/Conv: U(-1/√fan_in, 1/√fan_in)."""
    return uniform(shape, 1.0 / np.sqrt(max(fan_in, 1)), rng, dtype)
