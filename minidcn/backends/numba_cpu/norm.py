"""Group and batch normalisation as ``@njit`` loops (numba backend).

The same kernels, formulas and closed-form backward as ``backends/reference/norm.py``
(read its docstring first: the signatures and the derivation are there)::

    group_norm_forward(x, num_groups, weight, bias, eps)   -> (y, mean, rstd)
    group_norm_backward(grad_y, x, mean, rstd, weight, num_groups)
                                                           -> (grad_x, grad_weight, grad_bias)
    batch_norm_stats(x)                                    -> (mean, var)
    batch_norm_update_running(running_mean, running_var, mean, var, momentum, count) -> None
    batch_norm_forward(x, mean, var, weight, bias, eps)    -> (y, save_mean, save_rstd)
    batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training)
                                                           -> (grad_x, grad_weight, grad_bias)

How the work is split:

* group norm is parallel over the (n, g) groups: group g of image n is one contiguous run
  of M = C/G · L values, and the thread that owns it computes its statistics, writes its
  outputs, and in backward its grad_x and its per-(n, c) partial sums of dγ and dβ.  Those
  partials are then added over n in a fixed order, so the result is bitwise the same
  whatever the number of threads.  A group (32 KiB for the benchmark shape) stays in cache
  between the passes, so the extra pass of the two-pass statistics costs little.
* batch norm is parallel over the channels; a channel is N runs of L values.
* every sum is accumulated in float64 by :func:`centered_sums`, which keeps ``LANES``
  partial sums side by side (see its docstring for why).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = [
    "group_norm_forward",
    "group_norm_backward",
    "batch_norm_stats",
    "batch_norm_update_running",
    "batch_norm_forward",
    "batch_norm_backward",
]

LANES = 64  # partial sums kept side by side in centered_sums


@njit(cache=True)
def centered_sums(p, p0, q, q0):
    """(Σ_i (p_i - p0), Σ_i (p_i - p0)(q_i - q0)) over two 1-D arrays of one length, in float64.

    One formula serves every statistic: ``(x, 0, x, 0)`` gives Σx, ``(x, μ, x, μ)`` gives
    Σ(x - μ)², and ``(dy, 0, x, μ)`` gives Σdy and Σdy (x - μ).

    A single running sum makes each addition wait for the previous one, and without
    ``fastmath`` the compiler may not reorder the additions to use the vector unit.  So the
    values are read as rows of ``LANES`` and added column by column into ``LANES`` partial
    sums: that inner loop is element-wise (it vectorises), and the partial sums are added
    together at the end in a fixed order, so the result is deterministic.
    """
    n = p.shape[0]
    rows = n // LANES
    lane_p = np.zeros(LANES)
    lane_pq = np.zeros(LANES)
    for row in range(rows):
        start = row * LANES
        for k in range(LANES):
            u = p[start + k] - p0
            lane_p[k] += u
            lane_pq[k] += u * (q[start + k] - q0)
    sum_p = 0.0
    sum_pq = 0.0
    for i in range(rows * LANES, n):  # the last, incomplete row
        u = p[i] - p0
        sum_p += u
        sum_pq += u * (q[i] - q0)
    for k in range(LANES):
        sum_p += lane_p[k]
        sum_pq += lane_pq[k]
    return sum_p, sum_pq


def _as_channels(a, n, c):
    """A C-contiguous (N, C, L) view of an (N, C, *) array (a copy only if it must)."""
    return np.ascontiguousarray(a).reshape(n, c, -1)


def _affine(weight, bias, channels):
    """γ and β as float64 arrays of shape (C,); None means the identity (ones, zeros)."""
    gamma = np.ones(channels) if weight is None else np.ascontiguousarray(weight, np.float64)
    beta = np.zeros(channels) if bias is None else np.ascontiguousarray(bias, np.float64)
    return gamma, beta


# ---------------------------------------------------------------------------- group norm
@njit(cache=True, parallel=True)
def _group_norm_forward(x, num_groups, gamma, beta, eps, y, mean, rstd):
    """Per (n, g): μ = Σx / M, σ² = Σ(x - μ)² / M, r = 1/√(σ² + ε); y = (x - μ) r γ_c + β_c."""
    batch, channels, length = x.shape
    per_group = channels // num_groups
    size = per_group * length
    for job in prange(batch * num_groups):
        n, g = job // num_groups, job % num_groups
        channels_of_group = range(g * per_group, (g + 1) * per_group)
        total = 0.0
        for c in channels_of_group:  # pass 1: the mean
            total += centered_sums(x[n, c], 0.0, x[n, c], 0.0)[0]
        mu = total / size
        squares = 0.0
        for c in channels_of_group:  # pass 2: the mean squared deviation
            squares += centered_sums(x[n, c], mu, x[n, c], mu)[1]
        r = 1.0 / math.sqrt(squares / size + eps)
        mean[n, g] = mu
        rstd[n, g] = r
        for c in channels_of_group:
            scale = r * gamma[c]
            for i in range(length):
                y[n, c, i] = (x[n, c, i] - mu) * scale + beta[c]


@njit(cache=True, parallel=True)
def _group_norm_backward(dy, x, mean, rstd, gamma, dx, dgamma_part, dbeta_part):
    """Per (n, g): dx = r (h - mean(h) - x̂ mean(h x̂)) with h = γ_c dy (reference docstring).

    Per channel c of the group, Σdy and Σdy (x - μ) give dβ's and dγ's share of image n
    (dγ = Σ dy x̂ = r Σ dy (x - μ)), and, weighted by γ_c, the group means of h and h x̂.
    """
    batch, channels, length = x.shape
    num_groups = mean.shape[1]
    per_group = channels // num_groups
    size = per_group * length
    for job in prange(batch * num_groups):
        n, g = job // num_groups, job % num_groups
        channels_of_group = range(g * per_group, (g + 1) * per_group)
        mu, r = mean[n, g], rstd[n, g]
        sum_h = 0.0
        sum_h_xhat = 0.0
        for c in channels_of_group:
            sum_dy, sum_dy_xc = centered_sums(dy[n, c], 0.0, x[n, c], mu)
            dbeta_part[n, c] = sum_dy
            dgamma_part[n, c] = r * sum_dy_xc
            sum_h += gamma[c] * sum_dy
            sum_h_xhat += gamma[c] * r * sum_dy_xc
        mean_h = sum_h / size
        mean_h_xhat = sum_h_xhat / size
        for c in channels_of_group:
            for i in range(length):
                x_hat = (x[n, c, i] - mu) * r
                dx[n, c, i] = r * (gamma[c] * dy[n, c, i] - mean_h - x_hat * mean_h_xhat)


def group_norm_forward(x, num_groups, weight, bias, eps):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, beta = _affine(weight, bias, c)
    y = np.empty_like(data)
    mean = np.empty((n, num_groups))
    rstd = np.empty((n, num_groups))
    _group_norm_forward(data, num_groups, gamma, beta, eps, y, mean, rstd)
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(grad_y, x, mean, rstd, weight, num_groups):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, _ = _affine(weight, None, c)
    grad_x = np.empty_like(data)
    dgamma_part = np.empty((n, c))  # dγ and dβ of each image, added over n below
    dbeta_part = np.empty((n, c))
    _group_norm_backward(_as_channels(grad_y, n, c), data, mean, rstd, gamma,
                         grad_x, dgamma_part, dbeta_part)
    return (grad_x.reshape(x.shape), dgamma_part.sum(axis=0).astype(x.dtype),
            dbeta_part.sum(axis=0).astype(x.dtype))


# ---------------------------------------------------------------------------- batch norm
@njit(cache=True, parallel=True)
def _batch_norm_stats(x, mean, var):
    """Per channel c over (N, L): μ_c = Σx / M, then σ²_c = Σ(x - μ_c)² / M (biased)."""
    batch, channels, length = x.shape
    size = batch * length
    for c in prange(channels):
        total = 0.0
        for n in range(batch):
            total += centered_sums(x[n, c], 0.0, x[n, c], 0.0)[0]
        mu = total / size
        squares = 0.0
        for n in range(batch):
            squares += centered_sums(x[n, c], mu, x[n, c], mu)[1]
        mean[c] = mu
        var[c] = squares / size


@njit(cache=True)
def _batch_norm_update_running(running_mean, running_var, mean, var, momentum, count):
    """running ← (1 - m) running + m batch, with the unbiased variance var · count/(count-1)."""
    for c in range(mean.shape[0]):
        unbiased = var[c] * (count / (count - 1))
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c]
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased


@njit(cache=True, parallel=True)
def _batch_norm_forward(x, mean, var, gamma, beta, eps, y, save_mean, save_rstd):
    """y = (x - μ_c) r_c γ_c + β_c with r_c = 1/√(var_c + ε); μ, r kept in float64."""
    batch, channels, length = x.shape
    for c in prange(channels):
        mu = np.float64(mean[c])
        r = 1.0 / math.sqrt(np.float64(var[c]) + eps)
        save_mean[c] = mu
        save_rstd[c] = r
        scale = r * gamma[c]
        for n in range(batch):
            for i in range(length):
                y[n, c, i] = (x[n, c, i] - mu) * scale + beta[c]


@njit(cache=True, parallel=True)
def _batch_norm_backward(dy, x, save_mean, save_rstd, gamma, training, dx, dgamma, dbeta):
    """Per channel: dγ = Σdy x̂, dβ = Σdy; dx = γ r (dy - mean(dy) - x̂ mean(dy x̂)) in training,
    dx = γ r dy in evaluation (the running statistics are constants)."""
    batch, channels, length = x.shape
    size = batch * length
    for c in prange(channels):
        mu, r = save_mean[c], save_rstd[c]
        sum_dy = 0.0
        sum_dy_xc = 0.0
        for n in range(batch):
            s_dy, s_dy_xc = centered_sums(dy[n, c], 0.0, x[n, c], mu)
            sum_dy += s_dy
            sum_dy_xc += s_dy_xc
        dbeta[c] = sum_dy
        dgamma[c] = r * sum_dy_xc
        mean_dy = sum_dy / size if training else 0.0
        mean_dy_xhat = r * sum_dy_xc / size if training else 0.0
        scale = gamma[c] * r
        for n in range(batch):
            for i in range(length):
                x_hat = (x[n, c, i] - mu) * r
                dx[n, c, i] = scale * (dy[n, c, i] - mean_dy - x_hat * mean_dy_xhat)


def batch_norm_stats(x):
    n, c = x.shape[:2]
    mean = np.empty(c)
    var = np.empty(c)
    _batch_norm_stats(_as_channels(x, n, c), mean, var)
    return mean, var


def batch_norm_update_running(running_mean, running_var, mean, var, momentum, count):
    _batch_norm_update_running(running_mean, running_var, mean, var, float(momentum), float(count))


def batch_norm_forward(x, mean, var, weight, bias, eps):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, beta = _affine(weight, bias, c)
    y = np.empty_like(data)
    save_mean = np.empty(c)
    save_rstd = np.empty(c)
    _batch_norm_forward(data, np.ascontiguousarray(mean), np.ascontiguousarray(var),
                        gamma, beta, eps, y, save_mean, save_rstd)
    return y.reshape(x.shape), save_mean, save_rstd


def batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, _ = _affine(weight, None, c)
    grad_x = np.empty_like(data)
    dgamma = np.empty(c)
    dbeta = np.empty(c)
    _batch_norm_backward(_as_channels(grad_y, n, c), data, save_mean, save_rstd, gamma,
                         bool(training), grad_x, dgamma, dbeta)
    return grad_x.reshape(x.shape), dgamma.astype(x.dtype), dbeta.astype(x.dtype)
