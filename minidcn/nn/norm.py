"""Normalisation layers: GroupNorm, BatchNorm2d, and LayerNorm / InstanceNorm2d as GroupNorms.

``GroupNorm`` normalises each image on its own, so it behaves the same for a batch of 1 as
for a batch of 64, in training and in evaluation.  ``BatchNorm2d`` normalises each channel
over the batch: in training with the batch's statistics (and it keeps running averages of
them), in evaluation with those running averages.  That difference is the point of lesson
09.  ``LayerNorm`` and ``InstanceNorm2d`` are GroupNorm with one group and with one group per
channel; their docstrings say how they differ from torch's layers of the same name.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from ..functional._validate import as_tensor, check_float, check_int
from ..functional.norm import positive_eps
from .layers import _layer_dtype
from .module import Module, Parameter

__all__ = ["GroupNorm", "BatchNorm2d", "LayerNorm", "InstanceNorm2d"]


def _flag(layer: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_input(layer: str, x, channels: int, ndim: int | None = None):
    """``x`` as a Tensor with ``channels`` channels (and ``ndim`` dimensions when given)."""
    x = as_tensor(layer, "input", x)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer}: expected {ndim}-D input (N, C, H, W), got {x.ndim}-D with "
                         f"shape {x.shape}")
    if x.ndim < 2 or x.shape[1] != channels:
        raise ValueError(f"{layer}: expected input (N, {channels}, *) with {channels} channels, "
                         f"got shape {x.shape}")
    return x


class GroupNorm(Module):
    """y = group_norm(x, num_groups, weight, bias, eps) for x of shape (N, C, *).

    weight (ones) and bias (zeros), of shape (C,), exist when ``affine`` (torch's defaults).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, dtype=np.float32):
        super().__init__()
        layer = type(self).__name__
        self.num_groups = check_int(layer, "num_groups", num_groups, 1)
        self.num_channels = check_int(layer, "num_channels", num_channels, 1)
        if self.num_channels % self.num_groups:
            raise ValueError(f"{layer}: num_channels = {num_channels} must be divisible by "
                             f"num_groups = {num_groups}")
        self.eps = positive_eps(layer, eps)
        self.affine = _flag(layer, "affine", affine)
        dtype = _layer_dtype(layer, dtype)
        self.weight = Parameter(np.ones(self.num_channels, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_channels, dtype)) if self.affine else None

    def forward(self, x):
        x = _check_input(type(self).__name__, x, self.num_channels)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(GroupNorm):
    """Layer normalisation with one weight and one bias per channel, in one of two layouts.

    * ``channels_last=False`` (the default): GroupNorm(1, num_channels), each (N, C, *)
      image normalised over all of (C, *).  Unlike ``torch.nn.LayerNorm(normalized_shape)``,
      which normalises the last dimensions of any shape and learns one weight per element
      of ``normalized_shape`` (C·H·W of them for (C, H, W)), this layer learns one weight
      and one bias per channel, as ``torch.nn.GroupNorm(1, C)`` does.  Without affine, the
      numbers equal torch's ``LayerNorm(x.shape[1:], elementwise_affine=False)``.
    * ``channels_last=True``: a (*, C) input (e.g. (N, H, W, C)) normalised over its last
      axis, each position on its own: exactly ``torch.nn.LayerNorm(C)`` (weight and bias
      (C,), the same state_dict names), what DCNv3's block uses.

    See ``minidcn.functional.layer_norm``.
    """

    def __init__(self, num_channels, eps=1e-5, affine=True, *, channels_last=False,
                 dtype=np.float32):
        super().__init__(1, num_channels, eps, affine, dtype=dtype)
        self.channels_last = _flag("LayerNorm", "channels_last", channels_last)

    def forward(self, x):
        if not self.channels_last:
            return super().forward(x)
        x = as_tensor("LayerNorm", "input", x)
        if x.ndim < 1 or x.shape[-1] != self.num_channels:
            raise ValueError(f"LayerNorm: expected channels-last input (*, {self.num_channels}) "
                             f"with {self.num_channels} channels on the last axis, got shape "
                             f"{x.shape}")
        return F.layer_norm(x, self.weight, self.bias, self.eps, channels_last=True)

    def extra_repr(self) -> str:
        layout = ", channels_last=True" if self.channels_last else ""
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}{layout}"


class InstanceNorm2d(GroupNorm):
    """GroupNorm(num_features, num_features) on (N, C, H, W): each (n, c) plane on its own.

    Like ``torch.nn.InstanceNorm2d`` with its defaults (affine=False, no running
    statistics).  torch's options ``track_running_stats`` and ``momentum`` are not offered:
    the statistics always come from the input, in training and evaluation alike.
    """

    def __init__(self, num_features, eps=1e-5, affine=False, *, dtype=np.float32):
        super().__init__(num_features, num_features, eps, affine, dtype=dtype)

    def forward(self, x):
        x = _check_input("InstanceNorm2d", x, self.num_channels, ndim=4)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


_MOST_BATCHES = np.iinfo(np.int64).max - 1  # one more batch must still fit in int64


def _counter_problem(value: np.ndarray) -> str | None:
    """num_batches_tracked must be >= 0 (momentum=None divides by it + 1), and countable."""
    if value < 0:
        return f"must be >= 0 (batches seen), got {int(value)}"
    if value > _MOST_BATCHES:
        return f"must be <= {_MOST_BATCHES} (one more batch must fit in int64), got {int(value)}"
    return None


class BatchNorm2d(Module):
    """batch_norm over (N, H, W) per channel, with running statistics, as torch.nn.BatchNorm2d.

    * ``train()`` mode: normalise with the batch statistics and, when
      ``track_running_stats``, update the buffers ``running_mean`` and ``running_var`` in
      place (momentum, unbiased variance: see ``minidcn.functional.batch_norm``) and add 1
      to ``num_batches_tracked``.  ``momentum=None`` makes the running statistics the plain
      average of all batches so far (momentum 1 / num_batches_tracked), as in torch.
    * ``eval()`` mode: normalise with the running statistics; without them
      (``track_running_stats=False``) the batch statistics are used in both modes.

    The three buffers are in ``state_dict()``: running_mean (zeros), running_var (ones),
    num_batches_tracked (an int64 scalar).  weight (ones) and bias (zeros) when ``affine``.
    ``load_state_dict`` refuses a negative counter and running statistics that evaluation
    could not normalise by (non-finite, or a negative variance); ``forward`` refuses a
    counter assigned directly that is not a 0-d integer >= 0.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__()
        layer = "BatchNorm2d"
        self.num_features = check_int(layer, "num_features", num_features, 1)
        self.eps = positive_eps(layer, eps)
        if momentum is not None:
            momentum = check_float(layer, "momentum", momentum, 0.0)
            if momentum > 1.0:
                raise ValueError(f"{layer}: momentum must be in [0, 1] or None, got {momentum}")
        self.momentum = momentum
        self.affine = _flag(layer, "affine", affine)
        self.track_running_stats = _flag(layer, "track_running_stats", track_running_stats)
        dtype = _layer_dtype(layer, dtype)
        self.weight = Parameter(np.ones(self.num_features, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_features, dtype)) if self.affine else None
        tracked, c = self.track_running_stats, self.num_features
        self.register_buffer("running_mean", np.zeros(c, dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(c, dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if tracked else None)

    def forward(self, x):
        x = _check_input("BatchNorm2d", x, self.num_features, ndim=4)
        updating = self.training and self.track_running_stats
        batches = self._batches_tracked() + 1 if updating else 0
        if self.momentum is None:  # cumulative average: the k-th batch gets weight 1/k
            momentum = 1.0 / batches if updating else 0.0
        else:
            momentum = self.momentum
        use_batch_stats = self.training or self.running_mean is None
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         training=use_batch_stats, momentum=momentum, eps=self.eps)
        if updating:
            self.num_batches_tracked = np.array(batches, np.int64)
        return y

    def _batches_tracked(self) -> int:
        """The counter buffer as an int, checked: it may have been assigned directly."""
        count = self.num_batches_tracked
        array = np.asarray(count) if isinstance(count, (numbers.Integral, np.ndarray)) else None
        if array is None or array.shape != () or array.dtype.kind not in "iu":
            raise TypeError(f"BatchNorm2d: buffer num_batches_tracked must be a 0-d integer "
                            f"array, got {type(count).__name__} {count!r}")
        problem = _counter_problem(array)
        if problem:
            raise ValueError(f"BatchNorm2d: buffer num_batches_tracked {problem}")
        return int(array)

    def _state_problem(self, name, value) -> str | None:
        """What is wrong with a loaded buffer (see Module.load_state_dict), or None."""
        if name == "num_batches_tracked":
            return _counter_problem(value)
        if name == "running_mean" and not np.isfinite(value).all():
            return f"must hold finite means, got {value[~np.isfinite(value)][0]}"
        if name == "running_var" and not (np.isfinite(value) & (value >= 0)).all():
            return (f"must hold finite variances >= 0, got "
                    f"{value[~(np.isfinite(value) & (value >= 0))][0]}")
        return None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
