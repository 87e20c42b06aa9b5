"""GELU as ``numba.cuda`` kernels (cuda backend).

The same kernels as ``backends/reference/activation.py`` (read its docstring first); the
scalar formulas GELU(x) = x Φ(x) and GELU'(x) = Φ(x) + x φ(x) are written once in
``formulas/activation.py`` and compiled here with ``for_gpu``.  One thread per element
(grid-stride loop over the flat arrays: a CudaArray is C-contiguous), in float64, each
result rounded once to the input's dtype (``float64(...)`` also makes the CUDA simulator,
which computes with NumPy scalars, round where the GPU does).
"""

from __future__ import annotations

from numba import cuda, float64

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import activation as formulas
from ..formulas import for_gpu

__all__ = ["gelu_forward", "gelu_backward"]

gelu = for_gpu(formulas.gelu)
gelu_slope = for_gpu(formulas.gelu_slope)


@cuda.jit
def _gelu_kernel(x, out):
    """out[i] = GELU(x[i]) over 1-D arrays."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = gelu(float64(x[i]))


@cuda.jit
def _gelu_backward_kernel(grad_out, x, grad_x):
    """grad_x[i] = grad_out[i] GELU'(x[i]) over 1-D arrays."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        grad_x[i] = float64(grad_out[i]) * gelu_slope(float64(x[i]))


def gelu_forward(x):
    """out = x Φ(x), of x's shape and dtype."""
    out = CudaArray.empty(x.shape, x.dtype)
    if x.size:
        _gelu_kernel[grid_for(x.size)](x.dev.reshape(x.size), out.dev.reshape(x.size))
    return out


def gelu_backward(grad_out, x):
    """grad_x = grad_out (Φ(x) + x φ(x))."""
    grad_x = CudaArray.empty(x.shape, x.dtype)
    if x.size:
        _gelu_backward_kernel[grid_for(x.size)](grad_out.dev.reshape(x.size),
                                                x.dev.reshape(x.size),
                                                grad_x.dev.reshape(x.size))
    return grad_x
