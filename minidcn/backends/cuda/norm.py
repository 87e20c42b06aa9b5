"""Group and batch normalisation as ``numba.cuda`` kernels (cuda backend).

The same kernels, formulas and closed-form backward as ``backends/reference/norm.py``
(read its docstring first: the signatures and the derivation are there).  The scalar
formulas (r = 1/√(σ² + ε), the running-statistics update, the gradient sums and means of
the backward) are written once in ``formulas/norm.py`` and compiled here with ``for_gpu``.

Arrays are CudaArrays; the statistics are float64 CudaArrays.  Sums start from
``float64(0)`` and values that meet float32 data are cast with ``float64(...)``: on the GPU
a bare ``0.0`` would do (numba types it float64), but the CUDA simulator computes with
NumPy scalars, where ``0.0 + float32`` stays float32; the casts make both the same.

How the work is split: one thread block per set S that shares a mean (a (n, g) group for
group norm, a channel for batch norm).  The block's threads walk S with a block-stride loop,
each keeping a float64 partial sum, and :func:`block_sum` adds the partial sums in shared
memory as a tree.  Every thread gets the total, so all of them can go on to the next pass
(the variance after the mean) and then write their share of the outputs.  Blocks loop over
the sets (block-stride), so any grid is correct; :func:`_one_block_per` gives one block per
set.  The shared array has ``SLOTS`` entries, fixed when the kernels compile; a block may
have fewer threads (the tree uses blockDim slots), never more.  The order of every sum is fixed by the thread and block layout,
so results are deterministic, and no atomics are needed: group norm's dγ and dβ are summed
per (n, c) by the blocks and then over n by one thread per channel.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64

from ...device.array import CudaArray
from ...device import launch
from ...device.launch import grid_for
from ..formulas import for_gpu
from ..formulas import norm as formulas

__all__ = ["group_norm_forward", "group_norm_backward", "batch_norm_stats", "batch_norm_update_running",
           "batch_norm_forward", "batch_norm_backward"]

SLOTS = 128  # shared-memory slots of a block sum: the most threads a block may have

inverse_std, running_update, add_channel_terms, gradient_means = for_gpu(
    formulas.inverse_std, formulas.running_update, formulas.add_channel_terms, formulas.gradient_means)


@cuda.jit(device=True)
def block_sum(partials, value):
    """Σ of ``value`` over the threads of the block, returned to every thread.

    Tree reduction: each thread stores its value in ``partials`` (shared memory, one slot
    per thread); then, for stride = blockDim/2, blockDim/4, ..., 1, thread t < stride adds
    slot t + stride into slot t.  After log2(blockDim) rounds slot 0 holds the total.
    blockDim must be a power of two.  The last barrier makes every thread read slot 0
    before any thread may overwrite it in the next call.
    """
    t = cuda.threadIdx.x
    partials[t] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            partials[t] += partials[t + stride]
        cuda.syncthreads()
        stride //= 2
    total = partials[0]
    cuda.syncthreads()
    return total


def _one_block_per(sets):
    """Launch configuration (blocks, launch.THREADS_PER_BLOCK) giving each of ``sets`` a
    block; the block size is read at the call and must fit the shared array."""
    threads = launch.THREADS_PER_BLOCK
    if not 1 <= threads <= SLOTS or threads & (threads - 1):
        raise RuntimeError(f"cuda norm kernels need a power-of-two block of at most {SLOTS} "
                           f"threads, got {threads}")
    return grid_for(sets * threads)


def _affine(weight, bias, channels, dtype):
    """Device arrays γ and β of shape (C,); None means the identity (ones, zeros)."""
    gamma = cuda.to_device(np.ones(channels, dtype)) if weight is None else weight.dev
    beta = cuda.to_device(np.zeros(channels, dtype)) if bias is None else bias.dev
    return gamma, beta


# ---------------------------------------------------------------------------- group norm
@cuda.jit
def _group_norm_forward_kernel(x, gamma, beta, eps, y, mean, rstd):
    """x, y: (N, G, M); per block (n, g): μ, σ² by two block sums; y = (x - μ) r γ_c + β_c."""
    partials = cuda.shared.array(SLOTS, float64)
    batch, num_groups, size = x.shape
    per_group = gamma.shape[0] // num_groups
    length = size // per_group
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for job in range(cuda.blockIdx.x, batch * num_groups, cuda.gridDim.x):
        n, g = job // num_groups, job % num_groups
        total = float64(0)
        for i in range(t, size, step):
            total += x[n, g, i]
        mu = block_sum(partials, total) / size  # pass 1: the mean
        squares = float64(0)
        for i in range(t, size, step):
            d = x[n, g, i] - mu
            squares += d * d
        var = block_sum(partials, squares) / size  # pass 2: the mean squared deviation
        r = float64(inverse_std(var, eps))
        for i in range(t, size, step):
            c = g * per_group + i // length
            y[n, g, i] = (x[n, g, i] - mu) * (r * gamma[c]) + beta[c]
        if t == 0:
            mean[n, g] = mu
            rstd[n, g] = r


@cuda.jit
def _group_norm_backward_kernel(dy, x, mean, rstd, gamma, dx, dgamma_part, dbeta_part):
    """Per block (n, g): dx = r (h - mean(h) - x̂ mean(h x̂)) with h = γ_c dy.

    Channel by channel, two block sums give Σdy and Σdy (x - μ): image n's share of dβ_c
    and dγ_c = r Σdy (x - μ), and, weighted by γ_c, the group sums of h and h x̂.
    """
    partials = cuda.shared.array(SLOTS, float64)
    batch, num_groups, size = x.shape
    per_group = gamma.shape[0] // num_groups
    length = size // per_group
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for job in range(cuda.blockIdx.x, batch * num_groups, cuda.gridDim.x):
        n, g = job // num_groups, job % num_groups
        mu, r = mean[n, g], rstd[n, g]
        sum_h = float64(0)
        sum_h_xhat = float64(0)
        for k in range(per_group):
            c = g * per_group + k
            s_dy = float64(0)
            s_dy_xc = float64(0)
            for i in range(k * length + t, (k + 1) * length, step):
                s_dy += dy[n, g, i]
                s_dy_xc += dy[n, g, i] * (x[n, g, i] - mu)
            s_dy = block_sum(partials, s_dy)
            s_dy_xc = block_sum(partials, s_dy_xc)
            if t == 0:
                dbeta_part[n, c] = s_dy
                dgamma_part[n, c] = r * s_dy_xc
            sum_h, sum_h_xhat = add_channel_terms(sum_h, sum_h_xhat, s_dy, s_dy_xc, r, gamma[c])
        mean_h = sum_h / size
        mean_h_xhat = sum_h_xhat / size
        for i in range(t, size, step):
            c = g * per_group + i // length
            x_hat = (x[n, g, i] - mu) * r
            h = float64(gamma[c]) * dy[n, g, i]
            dx[n, g, i] = r * (h - mean_h - x_hat * mean_h_xhat)


@cuda.jit
def _sum_over_batch_kernel(dgamma_part, dbeta_part, dgamma, dbeta):
    """One thread per channel c: dγ_c = Σ_n dgamma_part[n, c], dβ_c likewise, n in order."""
    batch, channels = dgamma_part.shape
    for c in range(cuda.grid(1), channels, cuda.gridsize(1)):
        total_gamma = float64(0)
        total_beta = float64(0)
        for n in range(batch):
            total_gamma += dgamma_part[n, c]
            total_beta += dbeta_part[n, c]
        dgamma[c] = total_gamma
        dbeta[c] = total_beta


def group_norm_forward(x, num_groups, weight, bias, eps):
    n, c = x.shape[:2]
    groups = x.dev.reshape(n, num_groups, x.size // (n * num_groups))
    gamma, beta = _affine(weight, bias, c, x.dtype)
    y = cuda.device_array(x.shape, x.dtype)
    mean = cuda.device_array((n, num_groups), np.float64)
    rstd = cuda.device_array((n, num_groups), np.float64)
    _group_norm_forward_kernel[_one_block_per(n * num_groups)](
        groups, gamma, beta, float(eps), y.reshape(groups.shape), mean, rstd)
    return CudaArray(y), CudaArray(mean), CudaArray(rstd)


def group_norm_backward(grad_y, x, mean, rstd, weight, num_groups):
    n, c = x.shape[:2]
    shape = (n, num_groups, x.size // (n * num_groups))
    gamma, _ = _affine(weight, None, c, x.dtype)
    grad_x = cuda.device_array(x.shape, x.dtype)
    dgamma_part = cuda.device_array((n, c), np.float64)
    dbeta_part = cuda.device_array((n, c), np.float64)
    _group_norm_backward_kernel[_one_block_per(n * num_groups)](
        grad_y.dev.reshape(shape), x.dev.reshape(shape), mean.dev, rstd.dev, gamma,
        grad_x.reshape(shape), dgamma_part, dbeta_part)
    grad_weight = cuda.device_array(c, x.dtype)
    grad_bias = cuda.device_array(c, x.dtype)
    _sum_over_batch_kernel[grid_for(c)](dgamma_part, dbeta_part, grad_weight, grad_bias)
    return CudaArray(grad_x), CudaArray(grad_weight), CudaArray(grad_bias)


# ---------------------------------------------------------------------------- batch norm
@cuda.jit
def _batch_norm_stats_kernel(x, mean, var):
    """x: (N, C, L); per block c: μ_c and the biased σ²_c over its N·L values, two passes."""
    partials = cuda.shared.array(SLOTS, float64)
    batch, channels, length = x.shape
    size = batch * length
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for c in range(cuda.blockIdx.x, channels, cuda.gridDim.x):
        total = float64(0)
        for j in range(t, size, step):
            total += x[j // length, c, j % length]
        mu = block_sum(partials, total) / size
        squares = float64(0)
        for j in range(t, size, step):
            d = x[j // length, c, j % length] - mu
            squares += d * d
        squares = block_sum(partials, squares)
        if t == 0:
            mean[c] = mu
            var[c] = squares / size


@cuda.jit
def _update_running_kernel(running_mean, running_var, mean, var, momentum, count):
    """running ← (1 - m) running + m batch, with the unbiased variance var · count/(count-1)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        old_mean, old_var = float64(running_mean[c]), float64(running_var[c])
        running_mean[c], running_var[c] = running_update(old_mean, old_var, mean[c], var[c], momentum, count)


@cuda.jit
def _save_stats_kernel(mean, var, eps, save_mean, save_rstd):
    """Per channel, in float64: save_mean = μ_c, save_rstd = 1/√(var_c + ε)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        save_mean[c] = mean[c]
        save_rstd[c] = inverse_std(float64(var[c]), eps)


@cuda.jit
def _batch_norm_normalize_kernel(x, save_mean, save_rstd, gamma, beta, y):
    """One thread per element (n, c, l): y = (x - μ_c) r_c γ_c + β_c."""
    batch, channels, length = x.shape
    for k in range(cuda.grid(1), batch * channels * length, cuda.gridsize(1)):
        n, rest = k // (channels * length), k % (channels * length)
        c, i = rest // length, rest % length
        y[n, c, i] = (x[n, c, i] - save_mean[c]) * (save_rstd[c] * gamma[c]) + beta[c]


@cuda.jit
def _batch_norm_backward_kernel(dy, x, save_mean, save_rstd, gamma, training, dx, dgamma, dbeta):
    """Per block c: dγ = Σdy x̂, dβ = Σdy; dx = γ r (dy - mean(dy) - x̂ mean(dy x̂)) in
    training, dx = γ r dy in evaluation (the running statistics are constants)."""
    partials = cuda.shared.array(SLOTS, float64)
    batch, channels, length = x.shape
    size = batch * length
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for c in range(cuda.blockIdx.x, channels, cuda.gridDim.x):
        mu, r = save_mean[c], save_rstd[c]
        s_dy = float64(0)
        s_dy_xc = float64(0)
        for j in range(t, size, step):
            n, i = j // length, j % length
            s_dy += dy[n, c, i]
            s_dy_xc += dy[n, c, i] * (x[n, c, i] - mu)
        s_dy = block_sum(partials, s_dy)
        s_dy_xc = block_sum(partials, s_dy_xc)
        if t == 0:
            dbeta[c] = s_dy
            dgamma[c] = r * s_dy_xc
        mean_dy, mean_dy_xhat = gradient_means(s_dy, s_dy_xc, r, size, training)
        scale = gamma[c] * r
        for j in range(t, size, step):
            n, i = j // length, j % length
            x_hat = (x[n, c, i] - mu) * r
            dx[n, c, i] = scale * (dy[n, c, i] - mean_dy - x_hat * mean_dy_xhat)


def _channels_view(a):
    """The (N, C, L) view of an (N, C, *) device array."""
    n, c = a.shape[:2]
    return a.reshape(n, c, a.size // (n * c))


def batch_norm_stats(x):
    c = x.shape[1]
    mean = cuda.device_array(c, np.float64)
    var = cuda.device_array(c, np.float64)
    _batch_norm_stats_kernel[_one_block_per(c)](_channels_view(x.dev), mean, var)
    return CudaArray(mean), CudaArray(var)


def batch_norm_update_running(running_mean, running_var, mean, var, momentum, count):
    _update_running_kernel[grid_for(mean.shape[0])](
        running_mean.dev, running_var.dev, mean.dev, var.dev, float(momentum), float(count))


def batch_norm_forward(x, mean, var, weight, bias, eps):
    c = x.shape[1]
    gamma, beta = _affine(weight, bias, c, x.dtype)
    save_mean = cuda.device_array(c, np.float64)
    save_rstd = cuda.device_array(c, np.float64)
    _save_stats_kernel[grid_for(c)](mean.dev, var.dev, float(eps), save_mean, save_rstd)
    y = cuda.device_array(x.shape, x.dtype)
    _batch_norm_normalize_kernel[grid_for(x.size)](
        _channels_view(x.dev), save_mean, save_rstd, gamma, beta, _channels_view(y))
    return CudaArray(y), CudaArray(save_mean), CudaArray(save_rstd)


def batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training):
    c = x.shape[1]
    gamma, _ = _affine(weight, None, c, x.dtype)
    grad_x = cuda.device_array(x.shape, x.dtype)
    grad_weight = cuda.device_array(c, x.dtype)
    grad_bias = cuda.device_array(c, x.dtype)
    _batch_norm_backward_kernel[_one_block_per(c)](
        _channels_view(grad_y.dev), _channels_view(x.dev), save_mean.dev, save_rstd.dev, gamma,
        bool(training), _channels_view(grad_x), grad_weight, grad_bias)
    return CudaArray(grad_x), CudaArray(grad_weight), CudaArray(grad_bias)
