"""Group and batch normalisation in NumPy, written to be read beside the formulas.

Kernels (the same names and argument order in every backend)::

    group_norm_forward(x, num_groups, weight, bias, eps)   -> (y, mean, rstd)
    group_norm_backward(grad_y, x, mean, rstd, weight, num_groups)
                                                           -> (grad_x, grad_weight, grad_bias)
    batch_norm_stats(x)                                    -> (mean, var)
    batch_norm_update_running(running_mean, running_var, mean, var, momentum, count) -> None
    batch_norm_forward(x, mean, var, weight, bias, eps)    -> (y, save_mean, save_rstd)
    batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training)
                                                           -> (grad_x, grad_weight, grad_bias)

``x`` has shape (N, C, *) and is read as (N, C, L) with L the product of the trailing sizes.
``weight`` and ``bias`` are (C,) or None (None acts as ones / zeros).  The statistics
(``mean``, ``rstd``, ``var``, ``save_*``) are always float64, whatever the data type: group
norm's are (N, G), batch norm's are (C,).  ``y`` and every gradient have the dtype of ``x``;
``grad_weight`` and ``grad_bias`` are (C,) and always computed.

Both normalisations are one formula over a different set S of M elements:
``x̂ = (x - μ) r`` with ``μ = mean_S(x)``, ``σ² = mean_S((x - μ)²)`` (biased) and
``r = 1 / sqrt(σ² + ε)``, then ``y = γ_c x̂ + β_c`` per channel c.  Group norm takes S = the
C/G channels of group g in image n (M = C/G · L); batch norm takes S = channel c over the
whole batch (M = N · L).  Statistics are two passes in float64: first the mean, then the
mean squared deviation, which never subtracts two large nearly equal numbers (the one-pass
``E[x²] - E[x]²`` does, and loses every digit when the mean is 1e3 times the spread).

Backward (closed form).  Write ``h = γ_c dy`` (the gradient reaching x̂).  From
``∂μ/∂x_j = 1/M`` and ``∂r/∂x_j = -(r³/M)(x_j - μ) = -(r²/M) x̂_j`` (the Σ(x - μ) term
vanishes),

    ∂x̂_i/∂x_j = r (δ_ij - 1/M) - (r/M) x̂_i x̂_j,

so ``dx_j = Σ_i h_i ∂x̂_i/∂x_j = r (h_j - mean_S(h) - x̂_j mean_S(h x̂))``, and
``dγ_c = Σ dy x̂``, ``dβ_c = Σ dy`` over every element of channel c.  In batch norm's
evaluation mode μ and r are constants (the running statistics), so ``dx = r h``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_norm_forward", "group_norm_backward", "batch_norm_stats", "batch_norm_update_running",
           "batch_norm_forward", "batch_norm_backward"]


def _affine(weight, bias, channels):
    """γ and β as float64 arrays of shape (C,); None means the identity (ones, zeros)."""
    gamma = np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)
    beta = np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)
    return gamma, beta


def _per_channel(v):
    """A (C,) array shaped (1, C, 1) to broadcast over (N, C, L)."""
    return v[None, :, None]


def _affine_grads(dy, x_hat, dtype):
    """dγ_c = Σ dy x̂ and dβ_c = Σ dy over every element (n, l) of channel c."""
    return (dy * x_hat).sum(axis=(0, 2)).astype(dtype), dy.sum(axis=(0, 2)).astype(dtype)


def group_norm_forward(x, num_groups, weight, bias, eps):
    """y = γ_c (x - μ_ng) r_ng + β_c, statistics over each (n, g) group of M = C/G · L values."""
    n, c = x.shape[:2]
    groups = x.reshape(n, num_groups, -1).astype(np.float64)  # (N, G, M)
    mean = groups.mean(axis=2)  # pass 1: μ
    var = ((groups - mean[..., None]) ** 2).mean(axis=2)  # pass 2: σ², biased
    rstd = 1.0 / np.sqrt(var + eps)
    x_hat = ((groups - mean[..., None]) * rstd[..., None]).reshape(n, c, -1)
    gamma, beta = _affine(weight, bias, c)
    y = x_hat * _per_channel(gamma) + _per_channel(beta)
    return y.reshape(x.shape).astype(x.dtype), mean, rstd


def group_norm_backward(grad_y, x, mean, rstd, weight, num_groups):
    """dx = r (h - mean_g(h) - x̂ mean_g(h x̂)) with h = γ_c dy; dγ = Σ dy x̂; dβ = Σ dy."""
    n, c = x.shape[:2]
    dy = grad_y.reshape(n, c, -1).astype(np.float64)
    groups = x.reshape(n, num_groups, -1).astype(np.float64)
    x_hat = (groups - mean[..., None]) * rstd[..., None]  # (N, G, M)
    gamma, _ = _affine(weight, None, c)
    h = (dy * _per_channel(gamma)).reshape(groups.shape)
    mean_h = h.mean(axis=2, keepdims=True)
    mean_h_xhat = (h * x_hat).mean(axis=2, keepdims=True)
    grad_x = rstd[..., None] * (h - mean_h - x_hat * mean_h_xhat)
    return (grad_x.reshape(x.shape).astype(x.dtype),
            *_affine_grads(dy, x_hat.reshape(dy.shape), x.dtype))


def batch_norm_stats(x):
    """Per-channel mean and biased variance over (N, *), two passes in float64."""
    n, c = x.shape[:2]
    data = x.reshape(n, c, -1).astype(np.float64)
    mean = data.mean(axis=(0, 2))
    var = ((data - _per_channel(mean)) ** 2).mean(axis=(0, 2))
    return mean, var


def batch_norm_update_running(running_mean, running_var, mean, var, momentum, count):
    """In place: running ← (1 - m) running + m batch, the variance unbiased (× count/(count-1))."""
    unbiased = var * (count / (count - 1))
    old_mean = running_mean.astype(np.float64)
    old_var = running_var.astype(np.float64)
    running_mean[...] = (1.0 - momentum) * old_mean + momentum * mean
    running_var[...] = (1.0 - momentum) * old_var + momentum * unbiased


def batch_norm_forward(x, mean, var, weight, bias, eps):
    """y = γ_c (x - μ_c) r_c + β_c with r_c = 1/sqrt(var_c + ε); returns float64 μ and r too."""
    n, c = x.shape[:2]
    save_mean = np.array(mean, dtype=np.float64)
    save_rstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    data = x.reshape(n, c, -1).astype(np.float64)
    x_hat = (data - _per_channel(save_mean)) * _per_channel(save_rstd)
    gamma, beta = _affine(weight, bias, c)
    y = x_hat * _per_channel(gamma) + _per_channel(beta)
    return y.reshape(x.shape).astype(x.dtype), save_mean, save_rstd


def batch_norm_backward(grad_y, x, save_mean, save_rstd, weight, training):
    """Training: dx = γ r (dy - mean_c(dy) - x̂ mean_c(dy x̂)); evaluation: dx = γ r dy."""
    n, c = x.shape[:2]
    dy = grad_y.reshape(n, c, -1).astype(np.float64)
    data = x.reshape(n, c, -1).astype(np.float64)
    r = _per_channel(save_rstd)
    x_hat = (data - _per_channel(save_mean)) * r
    gamma, _ = _affine(weight, None, c)
    if training:
        mean_dy = dy.mean(axis=(0, 2), keepdims=True)
        mean_dy_xhat = (dy * x_hat).mean(axis=(0, 2), keepdims=True)
        grad_x = _per_channel(gamma) * r * (dy - mean_dy - x_hat * mean_dy_xhat)
    else:
        grad_x = _per_channel(gamma) * r * dy
    return grad_x.reshape(x.shape).astype(x.dtype), *_affine_grads(dy, x_hat, x.dtype)
