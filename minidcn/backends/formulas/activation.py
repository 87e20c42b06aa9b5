"""GELU, the scalar formulas shared by the numba_cpu and cuda backends.

The Gaussian error linear unit (Hendrycks & Gimpel, 2016) in its exact form, torch's
default (``approximate='none'``):

    GELU(x) = x Φ(x),        Φ(x) = ½ (1 + erf(x / √2))     (the standard normal CDF)
    GELU'(x) = Φ(x) + x φ(x),   φ(x) = e^(-x²/2) / √(2π)     (the standard normal density)

NumPy has no erf, so the reference backend (``backends/reference/activation.py``) calls
``math.erf`` element by element; numba compiles the same ``math.erf`` for the CPU and for
the GPU.  Both functions take and return float64 scalars.  At the edges they give torch's
answers: GELU(+inf) = inf, GELU(-inf) = -inf · 0 = nan, GELU'(±inf) = nan, and NaN stays NaN.
"""

from __future__ import annotations

import math

__all__ = ["gelu", "gelu_slope"]

SQRT_HALF = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(x):
    """x Φ(x) = ½ x (1 + erf(x / √2))."""
    return 0.5 * x * (1.0 + math.erf(x * SQRT_HALF))


def gelu_slope(x):
    """GELU'(x) = Φ(x) + x φ(x); the exponent -x²/2 <= 0, so e^ cannot overflow."""
    return 0.5 * (1.0 + math.erf(x * SQRT_HALF)) + x * INV_SQRT_2PI * math.exp(-0.5 * x * x)
