"""Multi-scale deformable attention, the sampling core of Deformable DETR (mmcv's
``multi_scale_deformable_attn``).

The formula and its gradients are in the reference kernel,
``backends/reference/multi_scale_deform_attn.py`` (the same file name in ``numba_cpu/`` and
``cuda/``); this module checks every argument (before any kernel runs: Numba checks no
bounds, and a wrong spatial shape would read another level's rows, or past the end of
value) and records the op in the graph, with the kernels' argument order (value,
spatial_shapes, sampling_locations, attention_weights).

Choices beyond mmcv, all in what is accepted:

* spatial_shapes holds integers: a NumPy integer array, a list or tuple of (H, W) pairs of
  ints, or anything NumPy reads as an integer array (a torch ``long`` tensor on the CPU).
  A minidcn Tensor is refused (minidcn Tensors are float), as are bool and float arrays.
  The op keeps its own int64 copy, so a caller may change its array after forward.
* every level must have at least one pixel (H_l >= 1 and W_l >= 1): a level of zero area
  has nothing to sample, and its points would read nothing, so it is refused as the
  mistake it most likely is (torch's grid_sample refuses an empty map too).  Each H_l and
  W_l is at most 2**31 - 1 and Σ_l H_l W_l must equal value's S axis exactly;
* level_start_index, which mmcv's compiled function takes besides spatial_shapes, is
  computed from spatial_shapes (as its pure-PyTorch version does);
* the batch N may be 0 (an empty output and empty gradients); no other axis may be empty.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..arrays import zeros
from ..backends import kernels
from ..function import Function
from ..tensor import Tensor
from ._validate import (MAX_INT, as_tensor, check_elements, check_ndim, check_only_batch_empty,
                        check_same_device, check_same_dtype, shown_int)

__all__ = ["multi_scale_deform_attn"]


class MultiScaleDeformAttn(Function):
    """out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](v H_l - 0.5,
    u W_l - 0.5); gradients for value, sampling_locations and attention_weights (None for spatial_shapes).

    ``ops`` is the backend that ``backends.kernels(device)`` picked: its
    ``multi_scale_deform_attn.py`` (``backends/numba_cpu/`` by default, ``reference/`` or
    ``cuda/``) holds both kernels, with this argument order.  ``spatial_shapes`` is the
    checked host int64 copy the op owns.  An empty batch skips the kernels."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations, attention_weights, ops):
        ctx.ops, ctx.spatial_shapes = ops, spatial_shapes
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        if value.shape[0] == 0:
            queries = sampling_locations.shape[1]
            return zeros((0, queries, value.shape[2] * value.shape[3]), value.dtype, like=value)
        return ops.multi_scale_deform_attn_forward(value, spatial_shapes, sampling_locations,
                                                   attention_weights)

    @staticmethod
    def backward(ctx, grad_out):
        value, sampling_locations, attention_weights = ctx.saved
        if value.shape[0] == 0:
            grad_value, grad_locations, grad_weights = (
                zeros(t.shape, value.dtype, like=value)
                for t in (value, sampling_locations, attention_weights))
        else:
            grad_value, grad_locations, grad_weights = ctx.ops.multi_scale_deform_attn_backward(
                grad_out, value, ctx.spatial_shapes, sampling_locations, attention_weights)
        return grad_value, None, grad_locations, grad_weights


def _spatial_shapes(fn: str, spatial_shapes, total_rows: int) -> np.ndarray:
    """spatial_shapes as a fresh (L, 2) int64 host array of positive (H_l, W_l), each at most
    MAX_INT, with Σ_l H_l W_l == total_rows (value's S axis)."""
    name = "spatial_shapes"
    if isinstance(spatial_shapes, Tensor):
        raise TypeError(f"{fn}: {name} must hold integers (a NumPy integer array or a list of "
                        f"(H, W) int pairs), got a minidcn Tensor (minidcn Tensors are float)")
    try:
        given = np.asarray(spatial_shapes)
    except (ValueError, TypeError) as err:  # ragged lists, objects NumPy cannot read
        raise TypeError(f"{fn}: {name} must be an (L, 2) array of integers, got "
                        f"{type(spatial_shapes).__name__} ({err})") from None
    if given.ndim != 2 or given.shape[1] != 2 or given.shape[0] == 0:
        raise ValueError(f"{fn}: {name} must have shape (L, 2) with L >= 1, rows (H_l, W_l), "
                         f"got shape {given.shape}")
    # A list's (or object array's) entries are read as given and checked exactly below: Python
    # ints too large for int64 make an object array, and an int past 2**63 beside smaller ones
    # a float64 one.  A list mixing bools with ints makes an int array: the bools are refused.
    entries = list(np.asarray(spatial_shapes, dtype=object).flat) if given.dtype == object or \
        isinstance(spatial_shapes, (list, tuple)) else []
    integers = given.dtype.kind in "iu" or (bool(entries) and all(
        isinstance(v, numbers.Integral) for v in entries))
    if not integers or any(isinstance(v, (bool, np.bool_)) for v in entries):
        raise TypeError(f"{fn}: {name} must hold integers (rows (H_l, W_l)), got dtype "
                        f"{given.dtype}{' holding a bool' if integers else ''}")
    values = [int(v) for v in (entries or given.flat)]
    for k, v in enumerate(values):
        if not 1 <= v <= MAX_INT:
            level, axis = divmod(k, 2)
            raise ValueError(
                f"{fn}: {name}[{level}, {axis}] ({'H' if axis == 0 else 'W'}_{level}) must be in "
                f"[1, 2**31 - 1] (a level needs at least one pixel), got {shown_int(v)}")
    total = sum(h * w for h, w in zip(values[0::2], values[1::2]))
    if total != total_rows:
        raise ValueError(f"{fn}: {name} {given.tolist()} covers Σ H_l W_l = {shown_int(total)} "
                         f"rows, expected value's S axis, {total_rows}")
    return np.array(values, dtype=np.int64).reshape(-1, 2)


def multi_scale_deform_attn(value, spatial_shapes, sampling_locations, attention_weights) -> Tensor:
    """Deformable DETR's multi-scale deformable attention (mmcv's
    ``multi_scale_deformable_attn_pytorch``: the same four arguments, in the same order).

        out[n, q, m·D + d] = Σ_l Σ_p A[n, q, m, l, p] · value_l[n, :, :, m, d](y, x),
        x = u W_l - 0.5,  y = v H_l - 0.5,

    bilinear sampling with zero padding (grid_sample with align_corners=False).

    Args:
        value: (N, S, M, D): the L levels' maps flattened row-major and concatenated,
            S = Σ_l H_l W_l; M heads of D channels.  N may be 0, no other axis.
        spatial_shapes: (L, 2) integers, rows (H_l, W_l), each in [1, 2**31 - 1]: a NumPy
            integer array or a list of int pairs (not a minidcn Tensor; see the module doc).
        sampling_locations: (N, Q, M, L, P, 2) normalised (x, y) positions, nominally in
            [0, 1]; NaN, infinite or far-away positions read 0 and get gradient 0.
        attention_weights: (N, Q, M, L, P), used as given (the module applies the softmax).

    Returns:
        (N, Q, M·D).  Differentiable in value, sampling_locations and attention_weights, all
        of one float dtype on one device.
    """
    fn = "multi_scale_deform_attn"
    v = as_tensor(fn, "value", value)
    loc = as_tensor(fn, "sampling_locations", sampling_locations)
    a = as_tensor(fn, "attention_weights", attention_weights)
    check_ndim(fn, "value", v, "(N, S, M, D)")
    check_ndim(fn, "sampling_locations", loc, "(N, Q, M, L, P, 2)")
    check_ndim(fn, "attention_weights", a, "(N, Q, M, L, P)")
    check_same_dtype(fn, value=v, sampling_locations=loc, attention_weights=a)
    device = check_same_device(fn, value=v, sampling_locations=loc, attention_weights=a)
    for name, t in (("value", v), ("sampling_locations", loc), ("attention_weights", a)):
        check_only_batch_empty(fn, name, t)
    shapes = _spatial_shapes(fn, spatial_shapes, v.shape[1])
    batch, _, heads, channels = v.shape
    levels = shapes.shape[0]
    queries, points = loc.shape[1], loc.shape[4]
    expected = (batch, queries, heads, levels, points, 2)
    if loc.shape != expected:
        raise ValueError(
            f"{fn}: sampling_locations must have shape (N, Q, M, L, P, 2) = {expected} (N = "
            f"{batch} and M = {heads} from value {v.shape}, L = {levels} from spatial_shapes, "
            f"Q and P its own, 2 for (x, y)), got {loc.shape}")
    if a.shape != expected[:5]:
        raise ValueError(
            f"{fn}: attention_weights must have shape (N, Q, M, L, P) = {expected[:5]} (those "
            f"of sampling_locations {loc.shape} without the last axis), got {a.shape}")
    check_elements(fn, "the output", (batch, queries, heads * channels),
                   "the query count Q and value's heads M and channels D")
    return MultiScaleDeformAttn.apply(v, shapes, loc, a, ops=kernels(device))
