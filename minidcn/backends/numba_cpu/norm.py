"""Group and batch normalisation as ``@njit`` loops (numba backend).

The same kernels, formulas and closed-form backward as ``backends/reference/norm.py``
(read its docstring first: the signatures and the derivation are there).  The scalar
formulas (r = 1/√(σ² + ε), the running-statistics update, the gradient sums and means of
the backward) are written once in ``formulas/norm.py`` and compiled here with ``for_cpu``.

How the work is split:

* group norm is parallel over the (n, g) groups: group g of image n is one contiguous run
  of M = C/G · L values, and the thread that owns it computes its statistics, writes its
  outputs, and in backward its grad_x and its per-(n, c) partial sums of dγ and dβ.  Those
  partials are then added over n in a fixed order, so the result is bitwise the same
  whatever the number of threads.  A group (32 KiB for the benchmark shape) stays in cache
  between the passes, so the extra pass of the two-pass statistics costs little.
* batch norm is parallel over the channels; a channel is N runs of L values.
* every sum is accumulated in float64 by the small loops :func:`row_sum`,
  :func:`row_squared_deviation` and :func:`row_sum_and_dot` (see ``floating.py`` for how
  they are allowed to use the vector unit).
* every element-wise pass walks one channel row ``x[n, c]`` with an index from 0: an index
  that starts elsewhere (``range(k * L, ...)``) makes numba check it for negative values
  on every element, which keeps the loop from being vectorised (measured 5x slower).
* the element-wise passes are small functions of their own, :func:`scale_row` and
  :func:`combine_rows`, called once per row.  Written out inline, inside the loops over
  groups and channels, the same loop compiled to slower code: the group norm backward
  for the benchmark's (8, 64, 64, 64) took about 2.0 ms of CPU time instead of 1.6 ms
  (float32 results are the same bits either way; float64 ones differ in the last bits).

What bounds these kernels is memory, not arithmetic: the forward reads x and writes y,
the backward reads dy and x and writes dx, each once from memory (the second pass over a
group finds it in cache).  On the 2-core machine of the benchmark, summing 8 MB of float32
took 0.25 ms of CPU time and copying it 0.57 ms; the group norm forward took 0.8 ms and
the backward 1.0 ms for (8, 64, 64, 64), so little is left to gain inside them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..formulas import for_cpu
from ..formulas import norm as formulas
from .floating import REORDER

__all__ = ["group_norm_forward", "group_norm_backward", "batch_norm_stats", "batch_norm_update_running",
           "batch_norm_forward", "batch_norm_backward"]

inverse_std, running_update, add_channel_terms, gradient_means = for_cpu(
    formulas.inverse_std, formulas.running_update, formulas.add_channel_terms, formulas.gradient_means)


@njit(cache=True, fastmath=REORDER)
def row_sum(p):
    """Σ_i p_i over a 1-D array, in float64."""
    total = 0.0
    for i in range(p.shape[0]):
        total += p[i]
    return total


@njit(cache=True, fastmath=REORDER)
def row_squared_deviation(p, mu):
    """Σ_i (p_i - μ)² over a 1-D array, in float64 (the second pass of the variance)."""
    total = 0.0
    for i in range(p.shape[0]):
        d = p[i] - mu
        total += d * d
    return total


@njit(cache=True, fastmath=REORDER)
def row_sum_and_dot(dy, x, mu):
    """(Σ_i dy_i, Σ_i dy_i (x_i - μ)) over two 1-D arrays of one length, in float64."""
    sum_dy = 0.0
    sum_dy_xc = 0.0
    for i in range(dy.shape[0]):
        sum_dy += dy[i]
        sum_dy_xc += dy[i] * (x[i] - mu)
    return sum_dy, sum_dy_xc


@njit(cache=True, fastmath=REORDER)
def scale_row(x, a, b, y):
    """y_i = a x_i + b over a 1-D array (the forward's element pass), in float64."""
    for i in range(x.shape[0]):
        y[i] = x[i] * a + b


@njit(cache=True, fastmath=REORDER)
def combine_rows(dy, x, dy_coef, x_coef, constant, dx):
    """dx_i = dy_coef dy_i + x_coef x_i + constant over 1-D arrays (the backward's element
    pass), in float64."""
    for i in range(dy.shape[0]):
        dx[i] = dy_coef * dy[i] + x_coef * x[i] + constant


def _as_channels(a, n, c):
    """A C-contiguous (N, C, L) view of an (N, C, *) array (a copy only if it must)."""
    return np.ascontiguousarray(a).reshape(n, c, -1)


def _affine(weight, bias, channels):
    """γ and β as float64 arrays of shape (C,); None means the identity (ones, zeros)."""
    gamma = np.ones(channels) if weight is None else np.ascontiguousarray(weight, np.float64)
    beta = np.zeros(channels) if bias is None else np.ascontiguousarray(bias, np.float64)
    return gamma, beta


# ---------------------------------------------------------------------------- group norm
@njit(cache=True, parallel=True, fastmath=REORDER)
def _group_norm_forward(x, num_groups, gamma, beta, eps, y, mean, rstd):
    """Per (n, g): μ = Σx / M, σ² = Σ(x - μ)² / M, r = 1/√(σ² + ε); y = (x - μ) r γ_c + β_c.

    The last line is computed as y = a_c x + b_c with a_c = r γ_c and b_c = β_c - μ a_c,
    one multiply-add per element.
    """
    batch, channels, length = x.shape
    per_group = channels // num_groups
    size = per_group * length
    groups = x.reshape(batch * num_groups, size)  # group (n, g) is row n·G + g
    for job in prange(batch * num_groups):
        n, g = job // num_groups, job % num_groups
        values = groups[job]
        mu = row_sum(values) / size  # pass 1: the mean
        r = inverse_std(row_squared_deviation(values, mu) / size, eps)  # pass 2
        mean[n, g] = mu
        rstd[n, g] = r
        for c in range(g * per_group, (g + 1) * per_group):
            a = r * gamma[c]
            scale_row(x[n, c], a, beta[c] - mu * a, y[n, c])


@njit(cache=True, parallel=True, fastmath=REORDER)
def _group_norm_backward(dy, x, mean, rstd, gamma, dx, dgamma_part, dbeta_part):
    """Per (n, g): dx = r (h - mean(h) - x̂ mean(h x̂)) with h = γ_c dy (reference docstring).

    Per channel c of the group, Σdy and Σdy (x - μ) give dβ's and dγ's share of image n
    (dγ = Σ dy x̂ = r Σ dy (x - μ)), and, weighted by γ_c, the group means of h and h x̂.
    With x̂ = (x - μ) r, dx expands to one multiply-add chain per element:

        dx = (r γ_c) dy + (-r² mean(h x̂)) x + r (μ r mean(h x̂) - mean(h)).
    """
    batch, channels, length = x.shape
    num_groups = mean.shape[1]
    per_group = channels // num_groups
    size = per_group * length
    for job in prange(batch * num_groups):
        n, g = job // num_groups, job % num_groups
        mu, r = mean[n, g], rstd[n, g]
        sum_h = 0.0
        sum_h_xhat = 0.0
        for c in range(g * per_group, (g + 1) * per_group):
            sum_dy, sum_dy_xc = row_sum_and_dot(dy[n, c], x[n, c], mu)
            dbeta_part[n, c] = sum_dy
            dgamma_part[n, c] = r * sum_dy_xc
            sum_h, sum_h_xhat = add_channel_terms(sum_h, sum_h_xhat, sum_dy, sum_dy_xc, r, gamma[c])
        mean_h = sum_h / size
        mean_h_xhat = sum_h_xhat / size
        x_coef = -r * r * mean_h_xhat
        constant = r * (mu * r * mean_h_xhat - mean_h)
        for c in range(g * per_group, (g + 1) * per_group):
            combine_rows(dy[n, c], x[n, c], r * gamma[c], x_coef, constant, dx[n, c])


def group_norm_forward(x, num_groups, weight, bias, eps):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, beta = _affine(weight, bias, c)
    y = np.empty(x.shape, x.dtype)  # owns its memory (autograd can adopt it without a copy)
    mean = np.empty((n, num_groups))
    rstd = np.empty((n, num_groups))
    _group_norm_forward(data, num_groups, gamma, beta, eps, y.reshape(data.shape), mean, rstd)
    return y, mean, rstd


def group_norm_backward(grad_y, x, mean, rstd, weight, num_groups):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, _ = _affine(weight, None, c)
    grad_x = np.empty(x.shape, x.dtype)
    dgamma_part = np.empty((n, c))  # dγ and dβ of each image, added over n below
    dbeta_part = np.empty((n, c))
    _group_norm_backward(_as_channels(grad_y, n, c), data, mean, rstd, gamma,
                         grad_x.reshape(data.shape), dgamma_part, dbeta_part)
    return (grad_x, dgamma_part.sum(axis=0).astype(x.dtype),
            dbeta_part.sum(axis=0).astype(x.dtype))


# ---------------------------------------------------------------------------- batch norm
@njit(cache=True, parallel=True, fastmath=REORDER)
def _batch_norm_stats(x, mean, var):
    """Per channel c over (N, L): μ_c = Σx / M, then σ²_c = Σ(x - μ_c)² / M (biased)."""
    batch, channels, length = x.shape
    size = batch * length
    for c in prange(channels):
        total = 0.0
        for n in range(batch):
            total += row_sum(x[n, c])
        mu = total / size
        squares = 0.0
        for n in range(batch):
            squares += row_squared_deviation(x[n, c], mu)
        mean[c] = mu
        var[c] = squares / size


@njit(cache=True)
def _batch_norm_update_running(running_mean, running_var, mean, var, momentum, count):
    """running ← (1 - m) running + m batch, with the unbiased variance var · count/(count-1)."""
    for c in range(mean.shape[0]):
        running_mean[c], running_var[c] = running_update(running_mean[c], running_var[c], mean[c], var[c],
                                                         momentum, count)


@njit(cache=True, parallel=True, fastmath=REORDER)
def _batch_norm_forward(x, mean, var, gamma, beta, eps, y, save_mean, save_rstd):
    """y = (x - μ_c) r_c γ_c + β_c with r_c = 1/√(var_c + ε); μ, r kept in float64.

    As in group norm, computed as y = a_c x + b_c with a_c = r_c γ_c, b_c = β_c - μ_c a_c.
    """
    batch, channels = x.shape[:2]
    for c in prange(channels):
        mu = np.float64(mean[c])
        r = inverse_std(np.float64(var[c]), eps)
        save_mean[c] = mu
        save_rstd[c] = r
        a = r * gamma[c]
        b = beta[c] - mu * a
        for n in range(batch):
            scale_row(x[n, c], a, b, y[n, c])


@njit(cache=True, parallel=True, fastmath=REORDER)
def _batch_norm_backward(dy, x, save_mean, save_rstd, gamma, training, dx, dgamma, dbeta):
    """Per channel: dγ = Σdy x̂, dβ = Σdy; dx = γ r (dy - mean(dy) - x̂ mean(dy x̂)) in training,
    dx = γ r dy in evaluation (the running statistics are constants).

    With x̂ = (x - μ) r, dx = (γ r) dy + (-γ r² mean(dy x̂)) x + γ r (μ r mean(dy x̂) - mean(dy)).
    """
    batch, channels, length = x.shape
    size = batch * length
    for c in prange(channels):
        mu, r = save_mean[c], save_rstd[c]
        sum_dy = 0.0
        sum_dy_xc = 0.0
        for n in range(batch):
            s_dy, s_dy_xc = row_sum_and_dot(dy[n, c], x[n, c], mu)
            sum_dy += s_dy
            sum_dy_xc += s_dy_xc
        dbeta[c] = sum_dy
        dgamma[c] = r * sum_dy_xc
        mean_dy, mean_dy_xhat = gradient_means(sum_dy, sum_dy_xc, r, size, training)
        scale = gamma[c] * r
        x_coef = -scale * r * mean_dy_xhat
        constant = scale * (mu * r * mean_dy_xhat - mean_dy)
        for n in range(batch):
            combine_rows(dy[n, c], x[n, c], scale, x_coef, constant, dx[n, c])


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
    y = np.empty(x.shape, x.dtype)  # owns its memory (autograd can adopt it without a copy)
    save_mean = np.empty(c)
    save_rstd = np.empty(c)
    _batch_norm_forward(data, np.ascontiguousarray(mean), np.ascontiguousarray(var),
                        gamma, beta, eps, y.reshape(data.shape), save_mean, save_rstd)
    return y, save_mean, save_rstd


def batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training):
    n, c = x.shape[:2]
    data = _as_channels(x, n, c)
    gamma, _ = _affine(weight, None, c)
    grad_x = np.empty(x.shape, x.dtype)
    dgamma = np.empty(c)
    dbeta = np.empty(c)
    _batch_norm_backward(_as_channels(grad_y, n, c), data, save_mean, save_rstd, gamma,
                         bool(training), grad_x.reshape(data.shape), dgamma, dbeta)
    return grad_x, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
