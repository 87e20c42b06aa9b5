"""GELU as ``@njit`` loops (numba backend).

The same kernels as ``backends/reference/activation.py`` (read its docstring first); the
scalar formulas GELU(x) = x Φ(x) and GELU'(x) = Φ(x) + x φ(x) are written once in
``formulas/activation.py`` and compiled here with ``for_cpu``.  The loops are parallel over
the elements (each thread writes only its own), in float64, each result rounded once to
the input's dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import activation as formulas
from ..formulas import for_cpu

__all__ = ["gelu_forward", "gelu_backward"]

gelu = for_cpu(formulas.gelu)
gelu_slope = for_cpu(formulas.gelu_slope)


@njit(cache=True, parallel=True)
def _gelu(x, out):
    """out[i] = GELU(x[i]) over 1-D arrays."""
    for i in prange(x.shape[0]):
        out[i] = gelu(np.float64(x[i]))


@njit(cache=True, parallel=True)
def _gelu_backward(grad_out, x, grad_x):
    """grad_x[i] = grad_out[i] GELU'(x[i]) over 1-D arrays."""
    for i in prange(x.shape[0]):
        grad_x[i] = np.float64(grad_out[i]) * gelu_slope(np.float64(x[i]))


def gelu_forward(x):
    """out = x Φ(x), of x's shape and dtype."""
    out = np.empty(x.shape, x.dtype)
    _gelu(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


def gelu_backward(grad_out, x):
    """grad_x = grad_out (Φ(x) + x φ(x))."""
    grad_x = np.empty(x.shape, x.dtype)
    _gelu_backward(np.ascontiguousarray(grad_out, dtype=x.dtype).reshape(-1),
                   np.ascontiguousarray(x).reshape(-1), grad_x.reshape(-1))
    return grad_x
