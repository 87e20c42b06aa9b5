"""Normalisation: group_norm and batch_norm, and layer_norm / instance_norm as group norms.

Every normalisation here is one formula applied to a different set S of values:

    x̂ = (x - μ_S) / sqrt(σ²_S + ε),    y = γ_c x̂ + β_c    (per channel c),

with μ_S the mean and σ²_S the biased variance (divide by |S|) of S.

* group_norm: S = one image's channels of one group, (n, g) -> C/G channels × H × W.
  Nothing is shared between images, so the result does not depend on the batch size.
* layer_norm: group_norm with one group (S = the whole image, C × H × W); with
  ``channels_last=True``, S = one position's C values of a (*, C) input (torch's
  ``nn.LayerNorm(C)``), a group norm of the (positions, C) matrix.
* instance_norm: group_norm with one group per channel (S = one H × W plane).
* batch_norm: S = one channel across the whole batch (N × H × W): in training the
  statistics come from the batch, so each image's output depends on the other images.

The backward is the closed form (derived in ``backends/reference/norm.py``), computed by
one kernel per backend, not by composing primitive ops.  Statistics are two passes in
float64 even for float32 data, so a mean of 1e3 times the spread costs no accuracy.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..arrays import zeros
from ..backends import kernels
from ..function import Function
from ..tensor import Tensor, _is_device_array
from ._validate import as_tensor, check_float, check_int, check_same_device, check_same_dtype
from .shape import reshape

__all__ = ["group_norm", "batch_norm", "layer_norm", "instance_norm"]


def _wanted(ctx, grads):
    """(grad_x, grad_weight, grad_bias), None for a weight or bias that was not given."""
    grad_x, grad_weight, grad_bias = grads
    return (grad_x, grad_weight if ctx.has_weight else None,
            grad_bias if ctx.has_bias else None)


class GroupNorm(Function):
    """y = γ_c (x - μ_ng) r_ng + β_c;  dx, dγ, dβ by the closed-form backward kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, ops, num_groups, eps):
        ctx.ops = ops
        y, mean, rstd = ops.group_norm_forward(x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups = num_groups
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved
        return _wanted(ctx, ctx.ops.group_norm_backward(grad, x, mean, rstd, weight,
                                                        ctx.num_groups))


class BatchNorm(Function):
    """y = γ_c (x - μ_c) r_c + β_c with given statistics; backward treats them as functions
    of x in training (batch statistics) and as constants in evaluation (running ones).

    Backward reads ``save_mean`` and ``save_rstd``, float64 arrays every backend's forward
    computes afresh, never the running buffers: a caller (or a later training step) that
    updates the running statistics in place cannot change an earlier graph's gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, ops, mean, var, eps, training):
        ctx.ops = ops
        y, save_mean, save_rstd = ops.batch_norm_forward(x, mean, var, weight, bias, eps)
        ctx.save_for_backward(x, weight, save_mean, save_rstd)
        ctx.training = training
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, save_mean, save_rstd = ctx.saved
        return _wanted(ctx, ctx.ops.batch_norm_backward(grad, x, save_mean, save_rstd,
                                                        weight, ctx.training))


class EmptyNorm(Function):
    """Any norm of an empty input, as torch allows: an empty output, no statistics, and
    zero gradients for weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.shape = x.shape
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return zeros(x.shape, x.dtype, like=x)

    @staticmethod
    def backward(ctx, grad):
        channels = ctx.shape[1:2]
        return _wanted(ctx, (zeros(ctx.shape, grad.dtype, like=grad),
                             zeros(channels, grad.dtype, like=grad),
                             zeros(channels, grad.dtype, like=grad)))


# ---------------------------------------------------------------------------- validation
def _input_and_affine(fn, input, weight, bias):
    """input as an (N, C, *) Tensor with values, weight and bias as (C,) Tensors or None."""
    x = as_tensor(fn, "input", input)
    if x.ndim < 2:
        raise ValueError(f"{fn}: input must be (N, C, *) with at least 2 dimensions, "
                         f"got {x.ndim}-D with shape {x.shape}")
    w = None if weight is None else as_tensor(fn, "weight", weight)
    b = None if bias is None else as_tensor(fn, "bias", bias)
    check_same_dtype(fn, input=x, weight=w, bias=b)
    check_same_device(fn, input=x, weight=w, bias=b)
    channels = x.shape[1]
    for name, t in (("weight", w), ("bias", b)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"{fn}: {name} must have shape (C,) = ({channels},) for input of "
                             f"shape {x.shape}, got {t.shape}")
    return x, w, b


def positive_eps(fn, eps) -> float:
    """eps as a float, finite and > 0: it keeps 1/sqrt(var + eps) finite on a constant group."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a real number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0.0):
        raise ValueError(f"{fn}: eps must be a finite number > 0 (it keeps 1/sqrt(var + eps) "
                         f"finite on a constant group), got {eps}")
    return eps


def _running_stat(fn, name, value, x: Tensor, written: bool):
    """The raw array (host ndarray or CudaArray) that batch_norm reads, or updates in place
    when ``written`` (training), or None."""
    if value is None:
        return None
    array = value.data if isinstance(value, Tensor) else value
    if not isinstance(array, np.ndarray) and not _is_device_array(array):
        raise TypeError(f"{fn}: {name} must be a Tensor, a numpy.ndarray or a CudaArray "
                        f"(it is updated in place), got {type(value).__name__}")
    channels = x.shape[1]
    if array.dtype != x.dtype:
        raise TypeError(f"{fn}: {name} must have the input's dtype {x.dtype}, got {array.dtype}")
    if tuple(array.shape) != (channels,):
        raise ValueError(f"{fn}: {name} must have shape (C,) = ({channels},) for input of "
                         f"shape {x.shape}, got {tuple(array.shape)}")
    device = "cpu" if isinstance(array, np.ndarray) else "cuda"
    if device != x.device:
        raise ValueError(f"{fn}: {name} is on {device} but input is on {x.device}")
    if written and device == "cpu" and not array.flags.writeable:
        raise ValueError(f"{fn}: {name} is a read-only array; it must be writable to be "
                         "updated in place")
    return array


def _shares_memory(a, b) -> bool:
    """Whether two arrays (both host or both device) overlap in memory."""
    if isinstance(a, np.ndarray):
        return bool(np.shares_memory(a, b))

    def span(array):  # a CudaArray owns C-contiguous memory: [start, start + nbytes)
        dev = array.dev  # the simulator keeps a NumPy array, seen through __array_interface__
        face = getattr(dev, "__cuda_array_interface__", None) or dev.__array_interface__
        return face["data"][0], face["data"][0] + array.size * array.dtype.itemsize

    (a_start, a_end), (b_start, b_end) = span(a), span(b)
    return a_start < b_end and b_start < a_end


def _check_separate(fn, buffers: dict, tensors: dict) -> None:
    """The running statistics are updated in place: neither may overlap the other, nor the
    input, weight or bias (an update would change them mid-call)."""
    names = list(buffers)
    for i, name in enumerate(names):
        others = {**{n: buffers[n] for n in names[i + 1:]},
                  **{n: t.data for n, t in tensors.items() if t is not None}}
        for other, array in others.items():
            if _shares_memory(buffers[name], array):
                raise ValueError(f"{fn}: {name} and {other} must be separate arrays, got two "
                                 f"that share memory ({name} is updated in place)")


def _check_running_values(fn, mean, var) -> None:
    """Evaluation divides by sqrt(running_var + eps): NaN out unless finite, var >= 0."""
    for name, array, low in (("running_mean", mean, None), ("running_var", var, 0.0)):
        host = array if isinstance(array, np.ndarray) else array.to_host()
        bad = ~np.isfinite(host) if low is None else ~(np.isfinite(host) & (host >= low))
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            wanted = "finite" if low is None else "finite and >= 0 (a variance)"
            raise ValueError(f"{fn}: {name} must be {wanted} to normalise by it "
                             f"(training=False), got {host[c]} at channel {c}")


# ---------------------------------------------------------------------------- group norms
def _group_norm(fn, input, num_groups, weight, bias, eps) -> Tensor:
    """The group norm behind group_norm, layer_norm and instance_norm (None: G = C)."""
    x, w, b = _input_and_affine(fn, input, weight, bias)
    channels = x.shape[1]
    groups = channels if num_groups is None else check_int(fn, "num_groups", num_groups, 1)
    if channels % groups:
        raise ValueError(f"{fn}: the {channels} channels of input {x.shape} cannot be split "
                         f"into num_groups={groups} equal groups (C must be divisible by it)")
    eps = positive_eps(fn, eps)
    if x.numel() == 0:
        return EmptyNorm.apply(x, w, b)
    return GroupNorm.apply(x, w, b, ops=kernels(x.device), num_groups=groups, eps=eps)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """Group normalisation (Wu & He, 2018), as ``torch.nn.functional.group_norm``.

    ``input`` (N, C, *) is viewed as (N, G, C/G, *).  Each (n, g) group of M = C/G · Π*
    values is normalised with its own mean and biased variance, ``(x - μ) / sqrt(σ² + ε)``,
    then channel c is scaled by ``weight[c]`` and shifted by ``bias[c]`` (both (C,),
    optional).  No statistic crosses images, so the output of an image does not depend on
    the rest of the batch, and there is no training/evaluation difference.

    Args:
        input: (N, C, *) Tensor; it may be empty (any axis 0), as in torch: the output is
            empty and weight and bias get zero gradients.
        num_groups: G >= 1, dividing C.
        weight, bias: (C,) Tensors or None (identity); same dtype and device as input.
        eps: finite and > 0, added to the variance.  (torch also accepts 0, which divides
            by zero on a constant group.)
    """
    return _group_norm("group_norm", input, num_groups, weight, bias, eps)


def layer_norm(input, weight=None, bias=None, eps=1e-5, *, channels_last=False) -> Tensor:
    """Layer normalisation, in one of two layouts.

    ``channels_last=False`` (the default): an (N, C, *) input normalised over all of
    (C, *), i.e. literally ``group_norm(input, 1, weight, bias, eps)``: a single group
    holding the whole image, each image normalised by the mean and variance of all its
    values, ``weight`` and ``bias`` per channel, (C,), as in ``nn.GroupNorm(1, C)``.

    ``channels_last=True``: a (*, C) input, such as an (N, H, W, C) feature map, normalised
    over its last axis alone: every position's C values by their own mean and biased
    variance, then ``weight`` (C,) and ``bias`` (C,) applied per channel.  This is exactly
    ``torch.nn.functional.layer_norm(input, (C,), weight, bias, eps)``, what
    ``torch.nn.LayerNorm(C)`` computes and what the channels-last blocks (DCNv3, DCNv4,
    transformers) use.  It is computed as a group norm with one group of the (M, C)
    matrix of the M = Π* positions: ``group_norm(input.reshape(M, C), 1, ...)``, reshaped
    back.

    How the default differs from ``torch.nn.functional.layer_norm(input, normalized_shape,
    weight, bias, eps)``: torch normalises over the last ``len(normalized_shape)``
    dimensions of any shape, and its affine has one weight per *element* of
    ``normalized_shape`` (e.g. (C, H, W)), not one per channel.  With ``normalized_shape =
    input.shape[1:]`` and no affine (or an affine constant over H and W) the two give the
    same numbers.  The signature differs too: there is no ``normalized_shape`` argument (the
    layout flag chooses between the two normalised sets), so pass weight, bias and eps by
    name.
    """
    fn = "layer_norm"
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"{fn}: channels_last must be a bool, got "
                        f"{type(channels_last).__name__} {channels_last!r}")
    if not channels_last:
        return _group_norm(fn, input, 1, weight, bias, eps)
    x = as_tensor(fn, "input", input)
    if x.ndim < 1:
        raise ValueError(f"{fn}: with channels_last=True input must be (*, C), at least 1-D, "
                         f"got a 0-d tensor")
    channels = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        shape = None if t is None else as_tensor(fn, name, t).shape
        if shape is not None and shape != (channels,):
            raise ValueError(f"{fn}: {name} must have shape (C,) = ({channels},) for "
                             f"channels-last input of shape {x.shape}, got {shape}")
    rows = math.prod(x.shape[:-1])
    y = _group_norm(fn, reshape(x, (rows, channels)), 1, weight, bias, eps)
    return reshape(y, x.shape)


def instance_norm(input, weight=None, bias=None, eps=1e-5) -> Tensor:
    """Instance normalisation of an (N, C, *) input: group_norm with G = C.

    It is literally ``group_norm(input, C, weight, bias, eps)``: one group per channel, so
    every (n, c) plane is normalised by its own mean and variance.

    How this differs from ``torch.nn.functional.instance_norm(input, running_mean=None,
    running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1, eps)``:
    torch can also keep running statistics; here the statistics always come from the input
    (torch's default ``use_input_stats=True`` without running statistics gives the same
    numbers).  The positional order differs, so pass weight, bias and eps by name.
    """
    return _group_norm("instance_norm", input, None, weight, bias, eps)


# ---------------------------------------------------------------------------- batch norm
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """Batch normalisation (Ioffe & Szegedy, 2015), as ``torch.nn.functional.batch_norm``.

    Channel c of ``input`` (N, C, *) is normalised by statistics over its N · Π* values:

    * ``training=True``: the batch mean and biased variance.  When running statistics are
      given they are updated **in place**: ``running ← (1 - momentum) running + momentum
      batch``, the variance term being the *unbiased* batch variance (× M / (M - 1)).
      Exactly 1 value per channel is an error (no variance to estimate); an empty input
      gives an empty output and leaves the running statistics unchanged, as in torch.  The
      gradient flows through the batch statistics.
    * ``training=False``: ``running_mean`` and ``running_var`` (required) are used as
      constants and left unchanged.  They must then be finite, and running_var >= 0: a
      ValueError names the first bad channel (torch accepts them and returns NaN).  In
      training they are only written, so their values are not checked there; a NaN batch
      makes them NaN, and the next evaluation call refuses them.

    Backward never reads the running statistics (see ``BatchNorm``): the graph keeps its own
    float64 copies of the statistics it normalised with.

    Args:
        input: (N, C, *) Tensor; it may be empty (any axis 0), as in torch.
        running_mean, running_var: (C,) arrays of the input's dtype on its device (numpy
            ndarray, CudaArray, or a Tensor whose data is updated; writable when
            training, which updates them; read-only arrays are fine in evaluation), two
            separate arrays that share memory with neither each other nor input, weight or
            bias; or both None (training only: then nothing is tracked).
        weight, bias: (C,) Tensors or None (identity).
        training: bool.
        momentum: in [0, 1].
        eps: finite and > 0.  (torch also accepts 0.)
    """
    fn = "batch_norm"
    x, w, b = _input_and_affine(fn, input, weight, bias)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{fn}: training must be a bool, got {type(training).__name__}")
    mean_buffer = _running_stat(fn, "running_mean", running_mean, x, training)
    var_buffer = _running_stat(fn, "running_var", running_var, x, training)
    if (mean_buffer is None) != (var_buffer is None):
        raise ValueError(f"{fn}: running_mean and running_var must both be given or both be "
                         f"None, got running_mean={'None' if mean_buffer is None else 'array'}, "
                         f"running_var={'None' if var_buffer is None else 'array'}")
    if mean_buffer is not None:
        _check_separate(fn, {"running_mean": mean_buffer, "running_var": var_buffer},
                        {"input": x, "weight": w, "bias": b})
    momentum = check_float(fn, "momentum", momentum, 0.0)
    if momentum > 1.0:
        raise ValueError(f"{fn}: momentum must be in [0, 1], got {momentum}")
    eps = positive_eps(fn, eps)
    count = x.shape[0] * math.prod(x.shape[2:])  # values per channel, even with C = 0
    if training and count == 1:
        raise ValueError(f"{fn}: training needs more than 1 value per channel to estimate a "
                         f"variance, got input of shape {x.shape} ({count} value per channel)")
    if not training and mean_buffer is None:
        raise ValueError(f"{fn}: running_mean and running_var are required when training=False")
    if not training:
        _check_running_values(fn, mean_buffer, var_buffer)
    if x.numel() == 0:
        return EmptyNorm.apply(x, w, b)  # as torch: the running statistics stay unchanged

    ops = kernels(x.device)
    if training:
        mean, var = ops.batch_norm_stats(x.data)
        if mean_buffer is not None:
            ops.batch_norm_update_running(mean_buffer, var_buffer, mean, var, momentum, count)
    else:
        mean, var = mean_buffer, var_buffer
    return BatchNorm.apply(x, w, b, ops=ops, mean=mean, var=var, eps=eps,
                           training=bool(training))
