"""Normalisation, the scalar formulas shared by the numba_cpu and cuda backends.

The formulas and the closed-form backward are stated over whole arrays in
``backends/reference/norm.py`` (read its docstring first).  Over a set S of M elements
(a group of an image for group norm, a channel over the batch for batch norm):

    μ = mean_S(x),   σ² = mean_S((x - μ)²),   r = 1 / sqrt(σ² + ε),   x̂ = (x - μ) r,

and batch norm's running statistics move toward the batch's, the variance unbiased:

    running ← (1 - m) running + m batch,   batch variance = σ² · M / (M - 1).

Backward, with h = γ_c dy (the gradient reaching x̂), group norm's
dx = r (h - mean_S(h) - x̂ mean_S(h x̂)) needs Σ_S h = Σ_c γ_c Σdy and
Σ_S h x̂ = Σ_c γ_c r Σdy (x - μ), channel by channel (Σ over the channel's values in S); and
with Σdy and Σdy (x - μ) summed over S, batch norm's
dx = γ r (dy - mean(dy) - x̂ mean(dy x̂)) needs mean(dy) = Σdy / M and
mean(dy x̂) = r Σdy (x - μ) / M; in evaluation mode μ and r are constants and both are 0.

Each function here is plain Python of float64 scalars and calls no other formula;
``numba_cpu`` compiles it with ``for_cpu`` and ``cuda`` with ``for_gpu`` (see
``formulas/__init__.py``).  The sums over S stay in the backends: how a sum is split over
threads is what differs between them.
"""

from __future__ import annotations

import math

__all__ = ["inverse_std", "running_update", "add_channel_terms", "gradient_means"]


def inverse_std(var, eps):
    """r = 1 / sqrt(σ² + ε)."""
    return 1.0 / math.sqrt(var + eps)


def running_update(running_mean, running_var, mean, var, momentum, count):
    """(running μ, running σ²) after one batch of ``count`` values per channel:
    (1 - m) running + m batch, with the batch variance unbiased, σ² · count / (count - 1)."""
    unbiased = var * (count / (count - 1))
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)


def add_channel_terms(sum_h, sum_h_xhat, sum_dy, sum_dy_xc, r, gamma_c):
    """(Σh, Σh x̂) of a group after adding channel c, whose values give Σdy and Σdy (x - μ):
    Σh + γ_c Σdy and Σh x̂ + γ_c r Σdy (x - μ)  (h = γ_c dy, x̂ = (x - μ) r)."""
    return sum_h + gamma_c * sum_dy, sum_h_xhat + gamma_c * r * sum_dy_xc


def gradient_means(sum_dy, sum_dy_xc, r, size, training):
    """(mean(dy), mean(dy x̂)) over a set of ``size`` values, from Σdy and Σdy (x - μ):
    (Σdy / M, r Σdy (x - μ) / M) in training, (0, 0) in evaluation mode."""
    if not training:
        return 0.0, 0.0
    return sum_dy / size, r * sum_dy_xc / size
