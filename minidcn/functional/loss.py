"""Losses: cross_entropy (torch.nn.functional.cross_entropy without class weights)."""

from __future__ import annotations

import numpy as np

from ..arrays import to_device_of
from ..tensor import Tensor
from ._validate import as_tensor
from .activation import log_softmax
from .reduction import sum as _sum


def cross_entropy(input, target, reduction="mean") -> Tensor:
    """-log softmax(input)[target], averaged (or summed) over the targets.

    input: (N, C) or (N, C, d1, ...) scores; target: integer class indices of shape
    (N,) or (N, d1, ...), given as an int array, a list or a Tensor of whole numbers.
    The picked log-probabilities are selected by multiplying with a one-hot mask (built on
    the host from the labels, then moved to the scores' device), so the op stays a
    composition of differentiable primitives.
    """
    x = as_tensor("cross_entropy", "input", input)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if x.ndim < 2:
        raise ValueError(f"cross_entropy: input must be (N, C, ...), got shape {x.shape}")
    labels = _labels(target)
    expected = (x.shape[0],) + x.shape[2:]
    if labels.shape != expected:
        raise ValueError(f"cross_entropy: target must have shape {expected}, got {labels.shape}")
    classes = x.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"cross_entropy: target values must lie in [0, {classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    one_hot = (np.arange(classes).reshape((1, classes) + (1,) * (x.ndim - 2))
               == labels[:, None]).astype(x.dtype)
    picked = log_softmax(x, 1) * Tensor._from_array(to_device_of(one_hot, x.data))
    per_target = -_sum(picked, 1)
    if reduction == "none":
        return per_target
    total = _sum(per_target)
    return total / labels.size if reduction == "mean" else total


def _labels(target) -> np.ndarray:
    data = target.to("cpu").numpy() if isinstance(target, Tensor) else np.asarray(target)
    if data.dtype.kind == "f":
        if not np.all(data == np.round(data)):
            raise TypeError("cross_entropy: target must hold whole class indices")
        data = data.astype(np.int64)
    if data.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be integer class indices, got {data.dtype}")
    return data
