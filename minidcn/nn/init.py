"""Parameter initialisation, torch's defaults, drawn from a seedable generator.

torch initialises the weights of Linear and Conv2d with kaiming_uniform(a=√5), which works
out to U(-1/√fan_in, 1/√fan_in), and their biases with the same bound.  Every layer takes
``generator=`` (a ``numpy.random.Generator``); without one it draws from a module-level
generator that ``minidcn.manual_seed(seed)`` resets, so whole runs are reproducible.

The blocks of the modern deformable family re-initialise some of their layers, as their
papers' code does with ``torch.nn.init``: :func:`xavier_uniform_` and :func:`constant_`
overwrite a Parameter in place, under torch's names.
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


def xavier_uniform_(param, generator=None):
    """In place, as ``torch.nn.init.xavier_uniform_`` (Glorot & Bengio, 2010): U(-b, b) with
    b = √(6 / (fan_in + fan_out)), for a weight (fan_out, fan_in, *kernel) whose fans are
    shape[1] and shape[0] times the kernel's size.  Returns ``param``."""
    if param.ndim < 2:
        raise ValueError(f"xavier_uniform_: the weight must be at least 2-D (fan_out, fan_in, "
                         f"...), got shape {param.shape}")
    receptive = int(np.prod(param.shape[2:], dtype=np.int64))
    fan_out, fan_in = param.shape[0] * receptive, param.shape[1] * receptive
    bound = np.sqrt(6.0 / max(fan_in + fan_out, 1))
    param.data[...] = uniform(param.shape, bound, generator, param.dtype)
    return param


def constant_(param, value: float):
    """In place, as ``torch.nn.init.constant_``: every entry ``value``.  Returns ``param``."""
    param.data[...] = value
    return param
