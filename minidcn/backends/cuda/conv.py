"""2-D convolution as numba.cuda kernels, one thread per element it computes (cuda backend).

The formula (read ``backends/reference/conv.py`` first), with g the group of output
channel o, C_g = C_in / G, O_g = C_out / G:

    y[b, o, i, j] = bias[o] + Σ_{c, u, v} w[o, c, u, v] · x[b, g·C_g + c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w].

On a GPU every output element can be its own thread, and so can every gradient element,
if each gradient is written as a gather (a sum the thread owns) instead of a scatter:

* grad_x: input pixel (row, col) of channel g·C_g + c was read by output (i, j) through
  kernel point (u, v) exactly when row = i·s_h - p_h + u·d_h and col = j·s_w - p_w + v·d_w,
  i.e. when (row + p_h - u·d_h) is a non-negative multiple of s_h (giving i < H_out) and
  likewise for the column.  So

      grad_x[b, g·C_g + c, row, col] = Σ_{o in group g} Σ_{u, v : i, j valid} grad_y[b, o, i, j] · w[o, c, u, v];

* grad_w[o, c, u, v] = Σ_{b, i, j} grad_y[b, o, i, j] · x[b, g·C_g + c, i·s_h - p_h + u·d_h, j·s_w - p_w + v·d_w];
* grad_bias[o] = Σ_{b, i, j} grad_y[b, o, i, j].

No thread writes another thread's element, so there are no atomics and the result does
not depend on the launch configuration.  Kernels use grid-stride loops (``launch.py``).
Accumulators start from ``zero``, a scalar of the arrays' dtype passed by the host, so a
float32 sum stays in float32 (a literal 0 would promote it to float64).
"""

from __future__ import annotations

from numba import cuda

from ...device.array import CudaArray
from ...device.launch import grid_for
from ..reference.conv import output_size

__all__ = ["conv2d_forward", "conv2d_backward"]


@cuda.jit(device=True)
def unravel(index, shape):
    """(a, b, c, d) with index = ((a·shape[1] + b)·shape[2] + c)·shape[3] + d."""
    d = index % shape[3]
    index //= shape[3]
    c = index % shape[2]
    index //= shape[2]
    return index // shape[1], index % shape[1], c, d


@cuda.jit(device=True)
def source_index(target, kernel_point, stride, padding, dilation, size):
    """The output index i with target = i·s - p + k·d for kernel point k, or -1 if none."""
    t = target + padding - kernel_point * dilation
    if t < 0 or t % stride != 0 or t // stride >= size:
        return -1
    return t // stride


@cuda.jit
def conv2d_forward_kernel(x, weight, bias, stride, padding, dilation, groups, y):
    """One thread per y[b, o, i, j]."""
    c_per_group, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    o_per_group = y.shape[1] // groups
    for index in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, o, i, j = unravel(index, y.shape)
        first_channel = (o // o_per_group) * c_per_group
        acc = bias[o]
        for c in range(c_per_group):
            for u in range(kh):
                row = i * stride[0] - padding[0] + u * dilation[0]
                if row < 0 or row >= x.shape[2]:
                    continue
                for v in range(kw):
                    col = j * stride[1] - padding[1] + v * dilation[1]
                    if 0 <= col < x.shape[3]:
                        acc += weight[o, c, u, v] * x[b, first_channel + c, row, col]
        y[b, o, i, j] = acc


@cuda.jit
def conv2d_grad_input_kernel(grad_y, weight, stride, padding, dilation, groups, zero, grad_x):
    """One thread per grad_x[b, ci, row, col], gathering from the outputs that read it."""
    c_per_group, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    o_per_group = grad_y.shape[1] // groups
    for index in range(cuda.grid(1), grad_x.size, cuda.gridsize(1)):
        b, ci, row, col = unravel(index, grad_x.shape)
        g, c = ci // c_per_group, ci % c_per_group
        acc = zero
        for u in range(kh):
            i = source_index(row, u, stride[0], padding[0], dilation[0], grad_y.shape[2])
            if i < 0:
                continue
            for v in range(kw):
                j = source_index(col, v, stride[1], padding[1], dilation[1], grad_y.shape[3])
                if j < 0:
                    continue
                for o in range(g * o_per_group, (g + 1) * o_per_group):
                    acc += grad_y[b, o, i, j] * weight[o, c, u, v]
        grad_x[b, ci, row, col] = acc


@cuda.jit
def conv2d_grad_weight_kernel(grad_y, x, stride, padding, dilation, groups, zero, grad_weight):
    """One thread per grad_w[o, c, u, v], summing over images and output pixels."""
    c_per_group = grad_weight.shape[1]
    o_per_group = grad_y.shape[1] // groups
    for index in range(cuda.grid(1), grad_weight.size, cuda.gridsize(1)):
        o, c, u, v = unravel(index, grad_weight.shape)
        channel = (o // o_per_group) * c_per_group + c
        acc = zero
        for b in range(x.shape[0]):
            for i in range(grad_y.shape[2]):
                row = i * stride[0] - padding[0] + u * dilation[0]
                if row < 0 or row >= x.shape[2]:
                    continue
                for j in range(grad_y.shape[3]):
                    col = j * stride[1] - padding[1] + v * dilation[1]
                    if 0 <= col < x.shape[3]:
                        acc += grad_y[b, o, i, j] * x[b, channel, row, col]
        grad_weight[o, c, u, v] = acc


@cuda.jit
def conv2d_grad_bias_kernel(grad_y, zero, grad_bias):
    """One thread per grad_bias[o] = Σ_{b, i, j} grad_y[b, o, i, j]."""
    for o in range(cuda.grid(1), grad_bias.size, cuda.gridsize(1)):
        acc = zero
        for b in range(grad_y.shape[0]):
            for i in range(grad_y.shape[2]):
                for j in range(grad_y.shape[3]):
                    acc += grad_y[b, o, i, j]
        grad_bias[o] = acc


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y (B, C_out, H_out, W_out) on the device."""
    out_size = output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    y = CudaArray.empty((x.shape[0], weight.shape[0]) + out_size, x.dtype)
    if bias is None:
        bias = CudaArray.zeros((weight.shape[0],), x.dtype)
    blocks, threads = grid_for(y.size)
    conv2d_forward_kernel[blocks, threads](x.dev, weight.dev, bias.dev, stride, padding,
                                           dilation, groups, y.dev)
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, need_grad_input=True):
    """(grad_x, grad_weight, grad_bias) on the device, each a gather kernel; grad_x is None
    (its kernel is not launched) when ``need_grad_input`` is false."""
    zero = x.dtype.type(0)
    grad_x = CudaArray.empty(x.shape, x.dtype) if need_grad_input else None
    grad_weight = CudaArray.empty(weight.shape, x.dtype)
    grad_bias = CudaArray.empty((weight.shape[0],), x.dtype)
    if need_grad_input:
        blocks, threads = grid_for(grad_x.size)
        conv2d_grad_input_kernel[blocks, threads](grad_y.dev, weight.dev, stride, padding,
                                                  dilation, groups, zero, grad_x.dev)
    blocks, threads = grid_for(grad_weight.size)
    conv2d_grad_weight_kernel[blocks, threads](grad_y.dev, x.dev, stride, padding, dilation,
                                               groups, zero, grad_weight.dev)
    blocks, threads = grid_for(grad_bias.size)
    conv2d_grad_bias_kernel[blocks, threads](grad_y.dev, zero, grad_bias.dev)
    return grad_x, grad_weight, grad_bias
