"""Bilinear sampling, as the deformable ops use it.

* :func:`bilinear_kernel` is the interpolation weight G(q, p) itself, for plotting and lessons;
* :func:`bilinear_sample` reads a feature map at real-valued (y, x) positions.

The formula and its conventions are in the reference kernel, ``backends/reference/bilinear.py``
(the same file name in ``numba_cpu/`` and ``cuda/``); this module checks the arguments (before
any kernel runs: Numba checks no bounds) and records the op in the graph.
"""

from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..backends.reference import bilinear as reference_bilinear
from ..function import Function
from ..tensor import Tensor
from ._validate import (as_tensor, check_ndim, check_only_batch_empty, check_same_device,
                        check_same_dtype)

__all__ = ["bilinear_kernel", "bilinear_sample"]


class BilinearSample(Function):
    """out[b, c, p] = Σ_q G(q, points[b, p]) x[b, c, q]; gradients for x and the points.

    ``ops`` is the backend that ``backends.kernels(device)`` picked; its ``bilinear.py``
    (``backends/numba_cpu/`` by default, ``reference/`` or ``cuda/``) holds both kernels."""

    @staticmethod
    def forward(ctx, x, points, ops):
        ctx.ops = ops
        ctx.save_for_backward(x, points)
        return ops.bilinear_sample_forward(x, points)

    @staticmethod
    def backward(ctx, grad_out):
        x, points = ctx.saved
        return ctx.ops.bilinear_sample_backward(grad_out, x, points)


def _host_coordinates(fn: str, name: str, value) -> np.ndarray:
    """A Tensor or array-like of (..., 2) coordinates as a float64 host array."""
    if isinstance(value, Tensor):
        data = np.asarray(value.detach().to("cpu").numpy(), dtype=np.float64)
    else:
        try:
            data = Tensor(value, dtype=np.float64).numpy()
        except TypeError as err:
            raise TypeError(f"{fn}: {name} {err}") from None
    if data.ndim == 0 or data.shape[-1] != 2:
        raise ValueError(f"{fn}: {name} must have a last axis of size 2 holding (y, x), "
                         f"got shape {data.shape}")
    return data


def bilinear_kernel(q, p) -> np.ndarray:
    """The bilinear interpolation weight G(q, p) = g(q_y, p_y) g(q_x, p_x).

    g(a, b) = max(0, 1 - |a - b|) is the tent of width one pixel on each side.

    ``q`` (integer pixels) and ``p`` (real positions) are (..., 2) arrays of (y, x) whose
    leading axes broadcast against each other; the result has the broadcast shape without
    the last axis, as a float64 NumPy array.  ``bilinear_sample`` computes
    x(p) = Σ_q G(q, p) x(q) (with zero padding outside the image).

    >>> bilinear_kernel([[0, 0], [0, 1], [1, 0], [1, 1]], [0.25, 0.5])
    array([0.375, 0.375, 0.125, 0.125])
    """
    fn = "bilinear_kernel"
    q, p = _host_coordinates(fn, "q", q), _host_coordinates(fn, "p", p)
    try:
        np.broadcast_shapes(q.shape, p.shape)
    except ValueError:
        raise ValueError(
            f"{fn}: q of shape {q.shape} and p of shape {p.shape} do not broadcast") from None
    return reference_bilinear.interpolation_weight(q, p)


def bilinear_sample(x, points) -> Tensor:
    """Sample every channel of ``x`` at real-valued positions, by bilinear interpolation.

    Args:
        x: (B, C, H, W) feature maps.
        points: (B, P, 2) positions (y, x) in pixel coordinates (row 0 and column 0 are the
            centres of the first pixels); image b is sampled at its own P points.  B may be
            0 (an empty output), no other axis.

    Returns:
        (B, C, P): out[b, c, p] = Σ_q G(q, points[b, p]) x[b, c, q], reading 0 outside the
        image (zero padding one pixel wide).  Differentiable in x and in the points; NaN,
        infinite or far-away points give 0 and receive gradient 0.
    """
    fn = "bilinear_sample"
    x = as_tensor(fn, "x", x)
    pts = as_tensor(fn, "points", points)
    check_ndim(fn, "x", x, "(B, C, H, W)")
    check_ndim(fn, "points", pts, "(B, P, 2)")
    check_same_dtype(fn, x=x, points=pts)
    device = check_same_device(fn, x=x, points=pts)
    check_only_batch_empty(fn, "x", x)
    check_only_batch_empty(fn, "points", pts)
    if pts.shape[2] != 2:
        raise ValueError(f"{fn}: points must have shape (B, P, 2) holding (y, x), got {pts.shape}")
    if pts.shape[0] != x.shape[0]:
        raise ValueError(f"{fn}: points has batch size {pts.shape[0]}, expected x's batch size "
                         f"{x.shape[0]} (x {x.shape}, points {pts.shape})")
    return BilinearSample.apply(x, pts, ops=kernels(device))
