"""Bilinear sampling with numba.cuda kernels (cuda backend).

The formula and its conventions are in ``backends/reference/bilinear.py``:

    x(p) = Σ_q G(q, p) x(q),   G(q, p) = g(q_y, p_y) g(q_x, p_x),   g(a, b) = max(0, 1 - |a - b|).

Three device helpers are shared with the deformable convolution (``cuda/deform_conv.py``):
``bilinear_weights`` (the corner, the four weights and their derivatives for one point),
``interpolate`` (Σ_i w_i x(q_i) over the four neighbours) and ``read_pixel`` (one neighbour's
value); both read 0 outside the image (zero padding).  They are the numba_cpu backend's
helpers (``numba_cpu/bilinear.py``), the same Python source compiled as device functions,
so the two backends cannot drift apart.

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
from ..numba_cpu import bilinear as host_bilinear

__all__ = ["bilinear_sample_forward", "bilinear_sample_backward"]


def _on_device(host_function):
    """The Python source of a numba_cpu helper, compiled as a device function.

    (With NUMBA_DISABLE_JIT=1 the helper is already a plain Python function.)
    """
    return cuda.jit(device=True)(getattr(host_function, "py_func", host_function))


bilinear_weights = _on_device(host_bilinear.bilinear_weights)
interpolate = _on_device(host_bilinear.interpolate)
read_pixel = _on_device(host_bilinear.read_pixel)


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
        s00, s01, s10, s11 = 0.0, 0.0, 0.0, 0.0
        if inside:
            for c in range(x.shape[1]):
                g = grad_out[b, c, p]
                s00 += g * read_pixel(x, b, c, y0, x0)
                s01 += g * read_pixel(x, b, c, y0, x0 + 1)
                s10 += g * read_pixel(x, b, c, y0 + 1, x0)
                s11 += g * read_pixel(x, b, c, y0 + 1, x0 + 1)
                for i in range(4):  # corner i is (y0 + i // 2, x0 + i % 2)
                    qy, qx = y0 + i // 2, x0 + i % 2
                    if 0 <= qy < x.shape[2] and 0 <= qx < x.shape[3]:
                        cuda.atomic.add(grad_x, (b, c, qy, qx), w[i] * g)
        grad_points[b, p, 0] = w_dy[0] * s00 + w_dy[1] * s01 + w_dy[2] * s10 + w_dy[3] * s11
        grad_points[b, p, 1] = w_dx[0] * s00 + w_dx[1] * s01 + w_dx[2] * s10 + w_dx[3] * s11


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
