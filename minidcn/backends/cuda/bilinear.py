"""Bilinear sampling with numba.cuda kernels (cuda backend).

The formula and its conventions are in ``backends/reference/bilinear.py``:

    x(p) = Σ_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|).

The scalar formulas (``bilinear_weights``: the corner, the four weights and their
derivatives for one point; ``interpolate``: Σ_i w_i x(q_i); ``add_corner_products`` and
``corner_sum``: the corner sums S_i and the position gradient Σ_i w_dy_i S_i, Σ_i w_dx_i S_i)
are written once in ``formulas/bilinear.py`` and compiled here as device functions with
``for_gpu``; the numba_cpu backend compiles the same source, so the two cannot drift
apart, and the deformable convolution (``cuda/deform_conv.py``) uses them too.

The scatter into a neighbour (nothing outside the image) uses ``cuda.atomic.add``, because
several points can share a neighbour.  It is written in each kernel body rather than in a
device function of this module: numba's CUDA simulator swaps in its fake ``cuda`` module
per module and per device-function call, which races when simulated threads of a kernel in
another module call such a function at the same time.

One thread per point (b, p), looping over channels: the weights are computed once per point.
The backward pass scatters into grad_x with atomics (the order of the additions, hence the
last bits in float, may vary between runs on a real GPU) and reduces grad_points in the
thread that owns the point.
"""

from __future__ import annotations

from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..formulas import bilinear as formulas
from ..formulas import for_gpu

__all__ = ["bilinear_sample_forward", "bilinear_sample_backward"]

bilinear_weights = for_gpu(formulas.bilinear_weights)
interpolate = for_gpu(formulas.interpolate)
add_corner_products = for_gpu(formulas.add_corner_products)
corner_sum = for_gpu(formulas.corner_sum)


@cuda.jit
def _sample_kernel(x, points, out):
    """out[b, c, p] = Σ_i w_i x[b, c, q_i]; one thread per point (b, p)."""
    n_points = points.shape[1]
    for t in range(cuda.grid(1), points.shape[0] * n_points, cuda.gridsize(1)):
        b, p = t // n_points, t % n_points
        inside, y0, x0, w, _, _ = bilinear_weights(points[b, p, 0], points[b, p, 1], x.shape[2], x.shape[3])
        for c in range(x.shape[1]):
            out[b, c, p] = interpolate(x, b, c, y0, x0, w) if inside else 0.0


@cuda.jit
def _sample_backward_kernel(grad_out, x, points, grad_x, grad_points):
    """Scatter grad_out to grad_x (atomics) and reduce it into grad_points; one thread per point.

    With S_i = Σ_c grad_out[b, c, p] x[b, c, q_i]:
    grad_points[b, p] = (Σ_i w_dy_i S_i, Σ_i w_dx_i S_i).
    """
    n_points = points.shape[1]
    for t in range(cuda.grid(1), points.shape[0] * n_points, cuda.gridsize(1)):
        b, p = t // n_points, t % n_points
        inside, y0, x0, w, w_dy, w_dx = bilinear_weights(points[b, p, 0], points[b, p, 1], x.shape[2], x.shape[3])
        s = (0.0, 0.0, 0.0, 0.0)
        if inside:
            for c in range(x.shape[1]):
                g = grad_out[b, c, p]
                s = add_corner_products(s, g, x, b, c, y0, x0)
                for i in range(4):  # corner i is (y0 + i // 2, x0 + i % 2)
                    qy, qx = y0 + i // 2, x0 + i % 2
                    if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
                        cuda.atomic.add(grad_x, (b, c, qy, qx), w[i] * g)
        grad_points[b, p, 0] = corner_sum(w_dy, s)
        grad_points[b, p, 1] = corner_sum(w_dx, s)


def bilinear_sample_forward(x, points):
    """out[b, c, p] = Σ_q G(q, points[b, p]) x[b, c, q]; x (B, C, H, W), points (B, P, 2)."""
    out = CudaArray.empty((x.shape[0], x.shape[1], points.shape[1]), x.dtype)
    _sample_kernel[grid_for(points.shape[0] * points.shape[1])](x.dev, points.dev, out.dev)
    return out


def bilinear_sample_backward(grad_out, x, points):
    """(grad_x, grad_points) of L = Σ grad_out · out."""
    grad_x = CudaArray.zeros(x.shape, x.dtype)
    grad_points = CudaArray.empty(points.shape, points.dtype)
    _sample_backward_kernel[grid_for(points.shape[0] * points.shape[1])](
        grad_out.dev, x.dev, points.dev, grad_x.dev, grad_points.dev)
    return grad_x, grad_points
