"""GELU over whole arrays (reference backend).

    gelu_forward:   out = GELU(x) = x Φ(x),   Φ(x) = ½ (1 + erf(x / √2))
    gelu_backward:  grad_x = grad_out · GELU'(x),   GELU'(x) = Φ(x) + x φ(x),
                    φ(x) = e^(-x²/2) / √(2π)

(the scalar formulas, and their values at ±inf, are in ``formulas/activation.py``).  NumPy
has no erf, so ``math.erf`` is applied element by element (``np.vectorize``: a Python loop,
slow but plain).  Every backend computes in float64 and rounds the result once to the
input's dtype.
"""

from __future__ import annotations

import math

import numpy as np

from ..formulas.activation import INV_SQRT_2PI, SQRT_HALF

__all__ = ["gelu_forward", "gelu_backward"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_forward(x):
    """out = x Φ(x), of x's shape and dtype."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # GELU(-inf) = -inf · 0 = nan, as in torch
        return (0.5 * x64 * (1.0 + _erf(x64 * SQRT_HALF))).astype(x.dtype)


def gelu_backward(grad_out, x):
    """grad_x = grad_out (Φ(x) + x φ(x))."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # GELU'(±inf) = nan, as in torch
        slope = 0.5 * (1.0 + _erf(x64 * SQRT_HALF)) + x64 * INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)
        return (np.asarray(grad_out, dtype=np.float64) * slope).astype(x.dtype)
