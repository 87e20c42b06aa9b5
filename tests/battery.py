"""Adversarial battery for issues 11 and 14: malformed calls against minidcn's public API
(issue 14's modern family, dcnv3 / dcnv4 / multi_scale_deform_attn / gelu / softmax /
layer_norm(channels_last=True) and their modules, in the generic cases and in ``modern.*``).

Not a pytest module (no ``test_`` prefix): it runs several hundred hostile calls, each one
watched by a parent process, and classifies what happened.  Run it from the repository root:

    PYTHONPATH=. python tests/battery.py [--backend numba|reference|cuda] [--out FILE]
                                         [--subset all|dangerous] [--only SUB[,SUB...]]
                                         [--workers N] [--timeout S] [--list]

``--out FILE`` writes every case's result as JSON (FILE) and as a markdown table
(FILE with .md).  ``--backend cuda`` runs device tensors (``.to("cuda")``) in numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1 is set for the workers).  ``--subset dangerous`` keeps
the mutation, empty-input, RoI and huge-integer cases, far offsets and locations, strided
device Tensors and mixed devices (the ones that can crash or hang).

How it runs: a pool of worker subprocesses (default 1) imports minidcn once, warms the common
kernels up, then reads case ids on stdin and answers one JSON line per case.  Each worker
runs under an address-space limit (RLIMIT_AS, 4 GiB; 16 GiB in the CUDA simulator, whose
threads reserve large stacks), so an absurd allocation becomes a MemoryError.  The parent
watches each case with a timeout; a worker that dies is a ``crash`` (with its signal and the
tail of its stderr), one that does not answer in time a ``hang`` (confirmed by a rerun with a
longer timeout in a fresh worker); then a fresh worker takes the remaining cases.

Outcomes:
* ``refused-clear``: ValueError or TypeError whose message names the argument (each case
  lists the names it accepts, e.g. ``rois`` or a state-dict key or the file's name);
* ``refused-unclear``: any other exception, or a message that names none of them;
* ``crash``, ``hang``, ``allocates-huge`` (MemoryError);
* ``silently-wrong``: a result that differs from the expected one (after a mutation: from
  the same run without it), NaN where a refusal or a finite value was due, or an invalid
  call accepted;
* ``ok``: valid input accepted with a correct / finite result (NaN in data may propagate).
Cases marked ``valid`` (e.g. batch 0, zero RoIs) should be accepted, as torch does; a
refusal of those is listed separately in the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ------------------------------------------------------------------------------ registry
CASES: "OrderedDict[str, dict]" = OrderedDict()
CLASSES = ("shape", "dtype", "type", "nonfinite", "mutation", "empty", "file", "hyper")


def add(cid, cls, fn, names=(), *, refuse=False, valid=False, dangerous=False,
        backends=("numba", "reference", "cuda")):
    """Register case ``cid``.  ``fn()`` returns None (fine) or a string saying what is wrong.
    ``refuse``: the call is invalid, so returning at all is silently-wrong (accepted).
    ``valid``: the call is valid (torch accepts it); a refusal is noted as such."""
    assert cls in CLASSES and cid not in CASES, cid
    dangerous = dangerous or cls in ("mutation", "empty") or "roi" in cid.lower()
    CASES[cid] = dict(cls=cls, fn=fn, names=tuple(names), refuse=refuse, valid=valid,
                      dangerous=dangerous, backends=tuple(backends))


BACKEND = "numba"


def F():
    import minidcn.functional as f
    return f


def md():
    import minidcn
    return minidcn


def dev(t):
    """The battery's device for a Tensor (cuda backend: moved with .to('cuda'))."""
    return t.to("cuda") if BACKEND == "cuda" else t


def leaf(shape, seed=0, dtype=np.float64, rg=True, scale=1.0):
    return md().Tensor((np.random.default_rng(seed).standard_normal(shape) * scale)
                       .astype(dtype), requires_grad=rg)


def host(t):
    if t is None:
        return None
    if hasattr(t, "to") and hasattr(t, "data"):
        return np.array(t.detach().to("cpu").numpy(), dtype=np.float64)
    return np.array(t, dtype=np.float64)


def stat(arr):
    """A running-statistic buffer on the battery's device."""
    return md().Tensor(arr).to("cuda") if BACKEND == "cuda" else arr


def backward(y, seed=99):
    w = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    (y * dev(md().Tensor(w))).sum().backward()


def grads(leaves):
    return [host(l.grad) if l.grad is not None else None for l in leaves]


def differ(a, b, what="gradient", rtol=1e-6, atol=1e-9, finite_only=False):
    """A string if two lists of arrays differ (NaN equal to NaN), else None.
    ``finite_only``: compare only the entries finite in both (sums with inf or 1e308 in
    them may give inf or NaN depending on the order of the additions)."""
    for i, (p, q) in enumerate(zip(a, b)):
        if (p is None) != (q is None):
            return f"{what} {i}: one is None"
        if p is None:
            continue
        if p.shape != q.shape:
            return f"{what} {i}: shape {p.shape} vs {q.shape}"
        if finite_only:
            both = np.isfinite(p) & np.isfinite(q)
            p, q = np.where(both, p, 0.0), np.where(both, q, 0.0)
        if not np.allclose(p, q, rtol=rtol, atol=atol, equal_nan=True):
            k = np.unravel_index(int(np.argmax(np.abs(np.nan_to_num(p - q)))), p.shape)
            return (f"{what} {i} differs from the unmutated run: max |diff| "
                    f"{float(np.nanmax(np.abs(p - q))):.3g} at {tuple(int(j) for j in k)}")
    return None


def nonfinite(arrs, what="output"):
    for i, a in enumerate(arrs):
        if a is not None and not np.all(np.isfinite(a)):
            return f"{what} {i} has {int((~np.isfinite(a)).sum())} non-finite values"
    return None


# ------------------------------------------------------------------------------ op specs
ROIS = np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.], [0, 0.5, 1, 5, 4]])
SHAPES = np.array([[2, 3], [1, 2]])  # multi_scale_deform_attn's levels: S = 6 + 2 = 8
MODERN = ("dcnv3", "dcnv4", "multi_scale_deform_attn", "gelu", "softmax", "layer_norm_cl")


def op_specs():
    """name -> (op(**kw), make(dtype) -> (kw, leaves), independent): ``independent`` means
    output[0] depends only on batch item / RoI 0 (a bad value in item 1 must not reach it)."""
    Fn = F()

    def t(shape, seed, dtype, rg=True, scale=1.0):
        l = leaf(shape, seed, dtype, rg, scale)
        return l, dev(l)

    def conv(dtype):
        (x, xd), (w, wd), (b, bd) = t((2, 4, 6, 6), 0, dtype), t((6, 4, 3, 3), 1, dtype), \
            t((6,), 2, dtype)
        return dict(input=xd, weight=wd, bias=bd, stride=1, padding=1, dilation=1,
                    groups=1), [x, w, b]

    def deform(dtype):
        (x, xd), (o, od), (w, wd), (b, bd), (m, mdv) = (
            t((2, 4, 6, 6), 0, dtype), t((2, 18, 6, 6), 3, dtype, scale=0.7),
            t((6, 4, 3, 3), 1, dtype), t((6,), 2, dtype), t((2, 9, 6, 6), 4, dtype))
        return dict(input=xd, offset=od, weight=wd, bias=bd, stride=1, padding=1,
                    dilation=1, mask=mdv), [x, o, w, b, m]

    def pool(dtype):
        x, xd = t((2, 4, 6, 6), 0, dtype)
        return dict(input=xd, kernel_size=2, stride=None, padding=0, dilation=1), [x]

    def apool(dtype):
        x, xd = t((2, 4, 6, 6), 0, dtype)
        return dict(input=xd, kernel_size=2, stride=None, padding=0), [x]

    def rpool(dtype):
        x, xd = t((2, 4, 6, 6), 0, dtype)
        return dict(input=xd, rois=ROIS.astype(dtype), output_size=2, spatial_scale=0.5), [x]

    def ralign(dtype):
        x, xd = t((2, 4, 6, 6), 0, dtype)
        return dict(input=xd, rois=ROIS.astype(dtype), output_size=2, spatial_scale=1.0,
                    sampling_ratio=2), [x]

    def dpool(dtype):
        (x, xd), (o, od), (m, mdv) = t((2, 4, 6, 6), 0, dtype), t((3, 2, 2, 2), 3, dtype), \
            t((3, 1, 2, 2), 4, dtype)
        return dict(input=xd, rois=ROIS.astype(dtype), offset=od, output_size=2,
                    spatial_scale=1.0, sampling_ratio=2, gamma=0.1, mask=mdv), [x, o, m]

    def pspool(dtype):
        (x, xd), (o, od) = t((2, 8, 6, 6), 0, dtype), t((3, 2, 2, 2), 3, dtype)
        return dict(input=xd, rois=ROIS.astype(dtype), offset=od, output_size=2,
                    spatial_scale=1.0, sampling_ratio=2, gamma=0.1), [x, o]

    def bsample(dtype):
        (x, xd), (p, pd) = t((2, 4, 6, 6), 0, dtype), t((2, 5, 2), 5, dtype, scale=2.0)
        return dict(x=xd, points=pd), [x, p]

    def gnorm(dtype):
        (x, xd), (w, wd), (b, bd) = t((2, 4, 6, 6), 0, dtype), t((4,), 1, dtype), \
            t((4,), 2, dtype)
        return dict(input=xd, num_groups=2, weight=wd, bias=bd, eps=1e-5), [x, w, b]

    def lnorm(dtype):
        kw, leaves = gnorm(dtype)
        del kw["num_groups"]
        return kw, leaves

    def bnorm(dtype):
        (x, xd), (w, wd), (b, bd) = t((2, 4, 6, 6), 0, dtype), t((4,), 1, dtype), \
            t((4,), 2, dtype)
        return dict(input=xd, running_mean=stat(np.zeros(4, dtype)),
                    running_var=stat(np.ones(4, dtype)), weight=wd, bias=bd,
                    training=True, momentum=0.1, eps=1e-5), [x, w, b]

    def lin(dtype):
        (x, xd), (w, wd), (b, bd) = t((3, 5), 0, dtype), t((4, 5), 1, dtype), t((4,), 2, dtype)
        return dict(input=xd, weight=wd, bias=bd), [x, w, b]

    def mm(dtype):
        (a, ad), (b, bd) = t((3, 5), 0, dtype), t((5, 4), 1, dtype)
        return dict(input=ad, other=bd), [a, b]

    def ce(dtype):
        x, xd = t((4, 3), 0, dtype)
        return dict(input=xd, target=np.array([0, 2, 1, 0])), [x]

    def lsm(dtype):
        x, xd = t((4, 3), 0, dtype)
        return dict(input=xd, dim=1), [x]

    def mul(dtype):
        (a, ad), (b, bd) = t((2, 3), 0, dtype), t((2, 3), 1, dtype)
        return dict(input=ad, other=bd), [a, b]

    # the modern family (issue 14): channels-last, group 2 of D = 2, a 3 x 3 kernel (P = 9)
    def dcn3(dtype):
        (x, xd), (o, od), (m, mdv) = (t((2, 5, 5, 4), 0, dtype), t((2, 5, 5, 36), 3, dtype,
                                                                    scale=0.7),
                                      t((2, 5, 5, 18), 4, dtype))
        return dict(input=xd, offset=od, mask=mdv, kernel_size=3, stride=1, padding=1,
                    dilation=1, group=2, offset_scale=1.0, remove_center=False), [x, o, m]

    def dcn4(dtype):
        (x, xd), (o, od) = t((2, 5, 5, 4), 0, dtype), t((2, 5, 5, 56), 3, dtype, scale=0.7)
        return dict(input=xd, offset_mask=od, kernel_size=3, stride=1, padding=1, dilation=1,
                    group=2, offset_scale=1.0, remove_center=False, softmax=False), [x, o]

    def msda(dtype):
        (v, vd), (loc, locd), (a, ad) = (t((2, 8, 2, 3), 0, dtype), t((2, 4, 2, 2, 2, 2), 5,
                                                                        dtype, scale=0.5),
                                         t((2, 4, 2, 2, 2), 4, dtype))
        return dict(value=vd, spatial_shapes=SHAPES.copy(), sampling_locations=locd,
                    attention_weights=ad), [v, loc, a]

    def act(dtype):
        x, xd = t((2, 3, 4), 0, dtype)
        return dict(input=xd), [x]

    def smax(dtype):
        x, xd = t((2, 3, 4), 0, dtype)
        return dict(input=xd, dim=1), [x]

    def lncl(dtype):
        (x, xd), (w, wd), (b, bd) = t((2, 3, 3, 4), 0, dtype), t((4,), 1, dtype), \
            t((4,), 2, dtype)
        return dict(input=xd, weight=wd, bias=bd, eps=1e-5), [x, w, b]

    def layer_norm_cl(input, weight=None, bias=None, eps=1e-5):
        return Fn.layer_norm(input, weight, bias, eps, channels_last=True)

    return {  # name: (op, make, independent)
        "conv2d": (Fn.conv2d, conv, True), "deform_conv2d": (Fn.deform_conv2d, deform, True),
        "max_pool2d": (Fn.max_pool2d, pool, True), "avg_pool2d": (Fn.avg_pool2d, apool, True),
        "roi_pool": (Fn.roi_pool, rpool, True), "roi_align": (Fn.roi_align, ralign, True),
        "deform_roi_pool": (Fn.deform_roi_pool, dpool, True),
        "deform_ps_roi_pool": (Fn.deform_ps_roi_pool, pspool, True),
        "bilinear_sample": (Fn.bilinear_sample, bsample, True),
        "group_norm": (Fn.group_norm, gnorm, True), "layer_norm": (Fn.layer_norm, lnorm, True),
        "instance_norm": (Fn.instance_norm, lnorm, True),
        "batch_norm": (Fn.batch_norm, bnorm, False), "linear": (Fn.linear, lin, True),
        "matmul": (Fn.matmul, mm, True), "cross_entropy": (Fn.cross_entropy, ce, False),
        "log_softmax": (Fn.log_softmax, lsm, True), "mul": (Fn.mul, mul, True),
        "dcnv3": (Fn.dcnv3, dcn3, True), "dcnv4": (Fn.dcnv4, dcn4, True),
        "multi_scale_deform_attn": (Fn.multi_scale_deform_attn, msda, True),
        "gelu": (Fn.gelu, act, True), "softmax": (Fn.softmax, smax, True),
        "layer_norm_cl": (layer_norm_cl, lncl, True),
    }


LAST_RESULT = []


def call_op(name, kw, dtype=np.float64, check_first=False, expect_finite=True):
    """Run op ``name`` forward and backward; a string if the result is not finite.
    The output and the gradients of the Tensor arguments are kept in LAST_RESULT."""
    call = op_specs()[name][0]
    y = call(**kw)
    out = host(y)
    if y.requires_grad:
        backward(y)
    LAST_RESULT[:] = [out] + [host(v.grad) for v in kw.values()
                              if isinstance(v, md().Tensor) and v.grad is not None]
    if check_first:  # a bad value in batch item / RoI 1 must not reach output 0
        return nonfinite([out[0]], "output[0] (clean item)")
    if expect_finite:
        return nonfinite([out])
    return None


class other_backend:
    """Run a block as if the battery ran on the other backend (cuda, numba -> reference;
    reference -> numba): the cross-check for calls one backend accepts."""

    def __enter__(self):
        global BACKEND
        self.saved = BACKEND
        self.name = "numba" if BACKEND == "reference" else "reference"
        BACKEND = self.name
        self.ctx = md().backend(self.name)
        self.ctx.__enter__()
        return self.name

    def __exit__(self, *exc):
        global BACKEND
        BACKEND = self.saved
        self.ctx.__exit__(*exc)
        return False


def cross_checked(body, finite_only=False):
    """``body()`` runs call_op; when the call is accepted, the other backend must accept it
    too and give the same output and gradients."""
    def run():
        verdict = body()
        mine = list(LAST_RESULT)
        with other_backend() as name:
            try:
                body()
            except Exception as err:  # noqa: BLE001
                # the refusal is classified in the other backend's own run; here the
                # result stands (a disagreement is noted, not counted as wrong)
                note = (f"NOTE backends disagree: accepted here, refused on {name}: "
                        f"{type(err).__name__}: {str(err)[:150]}")
                return (verdict + "; " + note) if verdict else ("ok", note)
            d = differ(mine, list(LAST_RESULT), "output/gradient", rtol=1e-5, atol=1e-6,
                       finite_only=finite_only)
        if d:
            return (verdict or "") + " backends disagree: " + d.replace("the unmutated run",
                                                                        name)
        return verdict
    return run


# ------------------------------------------------------------------------------ generic cases
BAD_DTYPES = {
    "int64": lambda a: a.astype(np.int64),
    "bool": lambda a: a > 0, "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object), "float16": lambda a: a.astype(np.float16),
}
BAD_TYPES = {"None": None, "str": "abc", "list": "LIST", "scalar": 1.5}
NONFINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "1e308": 1e308, "-1e308": -1e308}
HYPER_VALUES = {
    "posint": [0, -1, 2**31, 2**62, 2**63, 2**64, 10**30, 2.5, 2.0, "2", None, True,
               (1, 2, 3), (2, 0), float("nan"), np.uint64(2**64 - 1)],
    "nonneg": [-1, 2**31, 2**62, 2**64, -2**63, 2.5, None, (1, -1)],
    "ratio": [2**31, 2**62, 2**64, -2**63, 1024, 1025, 2.5, None],
    "float": [0, -1.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324,
              "1", None, True, 1j],
    "bool": [1, 0, "True", None, np.bool_(True), 2.0],
    "dim": [3, -4, 2**31, 2**63, 1.5, None, True, (0, 1), "1"],
}


RAW_KEYS = ("target", "running_mean", "running_var", "rois", "spatial_shapes")


def _orig_array(name, kw, key):
    v = kw[key]
    if v is None:
        return None
    return host(v) if not isinstance(v, np.ndarray) else v


# other names a clear message may use for an argument of these ops
ALIASES = {"mul": ["operand"], "matmul": ["operand"], "deform_conv2d": ["offset", "mask"],
           "cross_entropy": ["target"], "log_softmax": ["dim"], "linear": ["in_features"],
           "dcnv3": ["offset", "mask"], "dcnv4": ["offset_mask"],
           "multi_scale_deform_attn": ["spatial_shapes", "sampling_locations"]}


def build_generic():
    names = ["conv2d", "deform_conv2d", "max_pool2d", "avg_pool2d", "roi_pool", "roi_align",
             "deform_roi_pool", "deform_ps_roi_pool", "bilinear_sample", "group_norm",
             "layer_norm", "instance_norm", "batch_norm", "linear", "matmul", "cross_entropy",
             "log_softmax", "mul"] + list(MODERN)
    # which keys hold arrays, per op (static, so cases can be listed without importing)
    arrays = {
        "conv2d": ["input", "weight", "bias"], "deform_conv2d": ["input", "offset", "weight",
                                                               "bias", "mask"],
        "max_pool2d": ["input"], "avg_pool2d": ["input"], "roi_pool": ["input", "rois"],
        "roi_align": ["input", "rois"], "deform_roi_pool": ["input", "rois", "offset", "mask"],
        "deform_ps_roi_pool": ["input", "rois", "offset"], "bilinear_sample": ["x", "points"],
        "group_norm": ["input", "weight", "bias"], "layer_norm": ["input", "weight", "bias"],
        "instance_norm": ["input", "weight", "bias"],
        "batch_norm": ["input", "running_mean", "running_var", "weight", "bias"],
        "linear": ["input", "weight", "bias"], "matmul": ["input", "other"],
        "cross_entropy": ["input", "target"], "log_softmax": ["input"], "mul": ["input", "other"],
        "dcnv3": ["input", "offset", "mask"], "dcnv4": ["input", "offset_mask"],
        "multi_scale_deform_attn": ["value", "spatial_shapes", "sampling_locations",
                                    "attention_weights"],
        "gelu": ["input"], "softmax": ["input"], "layer_norm_cl": ["input", "weight", "bias"],
    }
    hypers = {
        "conv2d": dict(stride="posint", padding="nonneg", dilation="posint", groups="posint"),
        "deform_conv2d": dict(stride="posint", padding="nonneg", dilation="posint"),
        "max_pool2d": dict(kernel_size="posint", stride="posint", padding="nonneg",
                           dilation="posint"),
        "avg_pool2d": dict(kernel_size="posint", stride="posint", padding="nonneg"),
        "roi_pool": dict(output_size="posint", spatial_scale="float"),
        "roi_align": dict(output_size="posint", spatial_scale="float", sampling_ratio="ratio"),
        "deform_roi_pool": dict(output_size="posint", spatial_scale="float",
                                sampling_ratio="ratio", gamma="float"),
        "deform_ps_roi_pool": dict(output_size="posint", spatial_scale="float",
                                   sampling_ratio="ratio", gamma="float"),
        "group_norm": dict(num_groups="posint", eps="float"), "layer_norm": dict(eps="float"),
        "instance_norm": dict(eps="float"), "batch_norm": dict(momentum="float", eps="float"),
        "dcnv3": dict(kernel_size="posint", stride="posint", padding="nonneg", dilation="posint",
                      group="posint", offset_scale="float", remove_center="bool"),
        "dcnv4": dict(kernel_size="posint", stride="posint", padding="nonneg", dilation="posint",
                      group="posint", offset_scale="float", remove_center="bool",
                      softmax="bool"),
        "softmax": dict(dim="dim"), "layer_norm_cl": dict(eps="float"),
    }
    optional = {"conv2d": ["bias"], "deform_conv2d": ["bias", "mask"],
                "deform_roi_pool": ["offset", "mask"], "deform_ps_roi_pool": ["offset"],
                "group_norm": ["weight", "bias"], "layer_norm": ["weight", "bias"],
                "instance_norm": ["weight", "bias"],
                "batch_norm": ["weight", "bias", "running_mean", "running_var"],
                "linear": ["bias"], "layer_norm_cl": ["weight", "bias"]}
    batch_args = {"conv2d": ["input"], "deform_conv2d": ["input", "offset", "mask"],
                  "max_pool2d": ["input"], "avg_pool2d": ["input"],
                  "roi_pool": ["input", "rois"], "roi_align": ["input", "rois"],
                  "deform_roi_pool": ["input", "rois", "offset", "mask"],
                  "deform_ps_roi_pool": ["input", "rois", "offset"],
                  "bilinear_sample": ["x", "points"], "group_norm": ["input"],
                  "layer_norm": ["input"], "instance_norm": ["input"], "linear": ["input"],
                  "matmul": ["input"], "log_softmax": ["input"], "mul": ["input", "other"],
                  "dcnv3": ["input", "offset", "mask"], "dcnv4": ["input", "offset_mask"],
                  "multi_scale_deform_attn": ["value", "sampling_locations",
                                              "attention_weights"],
                  "gelu": ["input"], "softmax": ["input"], "layer_norm_cl": ["input"]}

    for op in names:
        for key in arrays[op]:
            # ---- wrong shapes: drop the last axis, grow the last axis, a 0-d array
            def shp(op=op, key=key, how="drop"):
                spec = op_specs()[op]
                kw, _ = spec[1](np.float64)
                a = _orig_array(op, kw, key)
                if how == "drop":
                    bad = a[..., 0] if a.ndim > 1 else a[0]
                elif how == "grow":  # one more channel (axis 1), or one more element
                    axis = 1 if a.ndim > 1 and key not in ("rois", "points") else -1
                    bad = np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis)
                else:
                    bad = np.ones((2,) + a.shape)
                kw[key] = bad if key in RAW_KEYS else dev(md().Tensor(bad))
                if key in ("running_mean", "running_var") and BACKEND == "cuda":
                    kw[key] = stat(np.asarray(bad, np.float64))
                return call_op(op, kw)
            for how in ("drop", "grow", "extra"):
                if key in ("rois", "spatial_shapes") and how == "grow":
                    continue
                add(f"{op}.{key}.shape_{how}", "shape",
                    cross_checked(lambda f=shp, h=how: f(how=h)), [key] + ALIASES.get(op, []))
            # ---- wrong dtypes: raw arrays of the right shape
            for dname, conv in BAD_DTYPES.items():
                if key == "target" and dname in ("int64", "int32", "uint8"):
                    continue
                def dty(op=op, key=key, conv=conv, dname=dname):
                    kw, _ = op_specs()[op][1](np.float64)
                    a = _orig_array(op, kw, key)
                    kw[key] = conv(np.asarray(a))
                    return call_op(op, kw, expect_finite=dname not in ("float16",))
                add(f"{op}.{key}.dtype_{dname}", "dtype", cross_checked(dty),
                    [key] + ALIASES.get(op, []))
            # ---- wrong types
            for tname, val in BAD_TYPES.items():
                def typ(op=op, key=key, val=val, tname=tname):
                    kw, _ = op_specs()[op][1](np.float64)
                    a = _orig_array(op, kw, key)
                    kw[key] = a.tolist() if tname == "list" else val
                    return call_op(op, kw)
                ok_none = tname == "None" and key in optional.get(op, []) and \
                    key not in ("running_mean", "running_var")
                add(f"{op}.{key}.type_{tname}", "type", cross_checked(typ),
                    [key] + ALIASES.get(op, []),
                    refuse=tname in ("str",) or (tname == "None" and not ok_none),
                    valid=ok_none)
            # ---- NaN / inf / huge in the data (in batch item / RoI 1 where there is one)
            if key in ("target", "spatial_shapes"):
                continue
            for vname, val in NONFINITE.items():
                in_batch = key in batch_args.get(op, [])
                def nf(op=op, key=key, val=val, in_batch=in_batch):
                    kw, _ = op_specs()[op][1](np.float64)
                    a = np.array(_orig_array(op, kw, key), dtype=np.float64)
                    if key == "rois":
                        a[1, 1:] = val  # coordinates of RoI 1 (batch index stays valid)
                    elif in_batch:
                        a[1].flat[0] = val
                    else:
                        a.flat[0] = val
                    if key in ("rois",):
                        kw[key] = a
                    elif key in ("running_mean", "running_var"):
                        kw[key] = stat(a)
                    else:
                        kw[key] = dev(md().Tensor(a))
                    independent = in_batch and op_specs()[op][2]
                    return call_op(op, kw, check_first=independent, expect_finite=False)
                add(f"{op}.{key}.value_{vname}", "nonfinite", cross_checked(nf, finite_only=True), [key],
                    dangerous=key in ("rois", "offset", "points", "mask", "offset_mask",
                                      "sampling_locations") and
                    vname in ("1e308", "-1e308", "inf"))
        # ---- absurd hyper-parameters
        for hname, kind in hypers.get(op, {}).items():
            for val in HYPER_VALUES[kind]:
                def hyp(op=op, hname=hname, val=val):
                    kw, _ = op_specs()[op][1](np.float64)
                    kw[hname] = val
                    return call_op(op, kw)
                huge = isinstance(val, (int, np.integer)) and not isinstance(val, bool) \
                    and abs(int(val)) >= 2**31
                # a hyper-parameter that changes the output size makes the fixed offset /
                # mask (or ps channels) the wrong shape: a refusal naming those is clear too
                extra = {"deform_conv2d": ["offset", "mask"],
                         "dcnv3": ["offset", "mask"], "dcnv4": ["offset_mask"],
                         "deform_roi_pool": ["offset", "mask"],
                         "deform_ps_roi_pool": ["offset", "input"]}.get(op, [])
                if hname == "kernel_size":
                    extra = extra + ["padding"]
                add(f"{op}.{hname}={val!r}", "hyper", cross_checked(hyp), [hname] + extra,
                    dangerous=huge)


# ------------------------------------------------------------------------------ mutations
def mutation(build, mutate, *, names=("rois",)):
    """``build()`` -> (y, leaves, ctx); ``mutate(ctx)`` changes the caller's array after
    forward.  The gradient must equal the one of the same run without the mutation."""
    def run():
        y, leaves, ctx = build()
        backward(y)
        ref = grads(leaves)
        y, leaves, ctx = build()
        mutate(ctx)
        backward(y)
        return differ(grads(leaves), ref)
    return run


def build_mutations():
    def roi_build(opname, as_tensor=False, dtype=np.float64, module=False):
        def build():
            Fn, T = F(), md().Tensor
            x = leaf((2, 8, 6, 6), 0, dtype)
            rois = ROIS.astype(dtype).copy()
            r = T(rois) if as_tensor else rois
            if BACKEND == "cuda" and as_tensor:
                return None  # not used
            xd = dev(x)
            leaves = [x]
            if module:
                nn = md().nn
                m = {"roi_align": lambda: nn.RoIAlign(2, 1.0, 2),
                     "roi_pool": lambda: nn.RoIPool(2, 1.0),
                     "deform_roi_pool": lambda: nn.DeformRoIPool(2, 1.0, 2, 0.1, 8, hidden=4,
                                                                 dtype=dtype)}[opname]()
                if BACKEND == "cuda":
                    m.to("cuda")
                y = m(xd, r)
            elif opname == "roi_pool":
                y = Fn.roi_pool(xd, r, 2, 1.0)
            elif opname == "roi_align":
                y = Fn.roi_align(xd, r, 2, 1.0, sampling_ratio=2)
            elif opname == "roi_align_adaptive":
                y = Fn.roi_align(xd, r, 2, 1.0, sampling_ratio=0, aligned=True)
            elif opname == "deform_roi_pool":
                o = leaf((3, 2, 2, 2), 3, dtype)
                mk = leaf((3, 1, 2, 2), 4, dtype)
                leaves += [o, mk]
                y = Fn.deform_roi_pool(xd, r, dev(o), 2, 1.0, 2, 0.1, mask=dev(mk))
            else:
                o = leaf((3, 2, 2, 2), 3, dtype)
                leaves += [o]
                y = Fn.deform_ps_roi_pool(xd, r, dev(o), 2, 1.0, 2, 0.1)
            return y, leaves, (rois, r)
        return build

    muts = {
        "batch_index_other_image": lambda c: c.__setitem__((1, 0), 0.0),
        "batch_index_-1e6": lambda c: c.__setitem__((1, 0), -1e6),
        "batch_index_1e9": lambda c: c.__setitem__((0, 0), 1e9),
        "batch_index_nan": lambda c: c.__setitem__((1, 0), np.nan),
        "coords_moved": lambda c: c.__setitem__((0, slice(1, 5)), [1, 1, 5, 5]),
        "coords_1e308": lambda c: c.__setitem__((0, slice(1, 5)), [-1e308, -1e308, 1e308, 1e308]),
        "coords_nan": lambda c: c.__setitem__((0, 3), np.nan),
    }
    ops = ["roi_pool", "roi_align", "roi_align_adaptive", "deform_roi_pool",
           "deform_ps_roi_pool"]
    for opname in ops:
        for mname, m in muts.items():
            add(f"mut.{opname}.rois_numpy.{mname}", "mutation",
                mutation(roi_build(opname), lambda ctx, m=m: m(ctx[0])))
            add(f"mut.{opname}.rois_tensor_data.{mname}", "mutation",
                mutation(roi_build(opname, as_tensor=True),
                         lambda ctx, m=m: m(ctx[1].data)), backends=("numba", "reference"))
        add(f"mut.{opname}.rois_numpy_float32.batch_index_other_image", "mutation",
            mutation(roi_build(opname, dtype=np.float32),
                     lambda ctx: muts["batch_index_other_image"](ctx[0])))
    for opname in ("roi_align", "roi_pool", "deform_roi_pool"):
        for mname in ("batch_index_other_image", "batch_index_-1e6", "coords_moved"):
            add(f"mut.nn.{opname}.rois_numpy.{mname}", "mutation",
                mutation(roi_build(opname, module=True), lambda ctx, m=muts[mname]: m(ctx[0])))

    # t[idx]: index arrays kept by GetItem
    def gi_build(kind):
        def build():
            x = leaf((4, 3), 0)
            idx = {"int_array": lambda: np.array([1, 1, 0, 0]),
                   "bool_mask": lambda: np.array([True, False, True, False]),
                   "list": lambda: [1, 1, 0, 0],
                   "tuple_of_arrays": lambda: (np.array([1, 2]), np.array([0, 2]))}[kind]()
            y = dev(x)[idx]
            return y, [x], idx
        return build
    gi_muts = {"int_array": lambda i: i.__setitem__(slice(None), [0, 2, 0, 0]),
               "bool_mask": lambda i: i.__setitem__(slice(None), [False, True, False, True]),
               "list": lambda i: i.__setitem__(slice(None), [0, 2, 0, 0]),
               "tuple_of_arrays": lambda i: i[0].__setitem__(slice(None), [3, 3])}
    for kind, m in gi_muts.items():
        add(f"mut.getitem.{kind}", "mutation", mutation(gi_build(kind), m), ["index"])
    add("mut.getitem.int_array_out_of_range", "mutation",
        mutation(gi_build("int_array"), lambda i: i.__setitem__(0, 10**6)), ["index"])

    # arrays passed where a Tensor goes, then changed: operands, masks, offsets, weights
    def arr_build(kind):
        def build():
            Fn = F()
            x = leaf((2, 4, 6, 6), 0)
            a = {"conv2d.weight": lambda: leaf((6, 4, 3, 3), 1, rg=False).data.copy(),
                 "deform_conv2d.mask": lambda: np.abs(leaf((2, 9, 6, 6), 4, rg=False).data),
                 "deform_conv2d.offset": lambda: leaf((2, 18, 6, 6), 3, rg=False).data * 0.7,
                 "deform_conv2d.weight": lambda: leaf((6, 4, 3, 3), 1, rg=False).data.copy(),
                 "deform_roi_pool.offset": lambda: leaf((3, 2, 2, 2), 3, rg=False).data,
                 "deform_roi_pool.mask": lambda: np.abs(leaf((3, 1, 2, 2), 4, rg=False).data),
                 "bilinear_sample.points": lambda: leaf((2, 5, 2), 5, rg=False).data * 2,
                 "mul.other": lambda: leaf((2, 4, 6, 6), 1, rg=False).data.copy(),
                 "div.other": lambda: 2 + leaf((2, 4, 6, 6), 1, rg=False).data ** 2,
                 "pow.exponent": lambda: np.abs(leaf((2, 4, 6, 6), 1, rg=False).data),
                 "rmul.ndarray": lambda: leaf((2, 4, 6, 6), 1, rg=False).data.copy(),
                 "group_norm.weight": lambda: leaf((4,), 1, rg=False).data.copy(),
                 "matmul.other": lambda: leaf((6, 3), 1, rg=False).data.copy(),
                 "linear.weight": lambda: leaf((3, 6), 1, rg=False).data.copy(),
                 "cross_entropy.target": lambda: np.array([0, 2, 1, 0]),
                 }[kind]()
            xd = dev(x)
            if kind == "conv2d.weight":
                y = Fn.conv2d(xd, a, padding=1)
            elif kind == "deform_conv2d.mask":
                y = Fn.deform_conv2d(xd, dev(leaf((2, 18, 6, 6), 3, rg=False)),
                                     dev(leaf((6, 4, 3, 3), 1, rg=False)), padding=1, mask=a)
            elif kind == "deform_conv2d.offset":
                y = Fn.deform_conv2d(xd, a, dev(leaf((6, 4, 3, 3), 1, rg=False)), padding=1)
            elif kind == "deform_conv2d.weight":
                y = Fn.deform_conv2d(xd, dev(leaf((2, 18, 6, 6), 3, rg=False)), a, padding=1)
            elif kind == "deform_roi_pool.offset":
                y = Fn.deform_roi_pool(xd, ROIS.copy(), a, 2, 1.0, 2, 0.1)
            elif kind == "deform_roi_pool.mask":
                y = Fn.deform_roi_pool(xd, ROIS.copy(), None, 2, 1.0, 2, 0.1, mask=a)
            elif kind == "bilinear_sample.points":
                y = Fn.bilinear_sample(xd, a)
            elif kind == "mul.other":
                y = Fn.mul(xd, a)
            elif kind == "div.other":
                y = Fn.div(xd, a)
            elif kind == "pow.exponent":
                y = Fn.pow(Fn.mul(xd, xd), a)
            elif kind == "rmul.ndarray":
                y = a * xd
            elif kind == "group_norm.weight":
                y = Fn.group_norm(xd, 2, a)
            elif kind == "matmul.other":
                y = Fn.matmul(Fn.reshape(xd, (48, 6)), a)
            elif kind == "linear.weight":
                y = Fn.linear(Fn.reshape(xd, (48, 6)), a)
            elif kind == "cross_entropy.target":
                y = Fn.cross_entropy(Fn.reshape(xd, (4, 72))[:, :3], a, reduction="none")
            return y, [x], a
        return build

    def arr_mut(a):
        if a.dtype.kind in "iu":
            a[...] = a[::-1].copy()
        else:
            a *= 3.0
            a += 0.25
    for kind in ("conv2d.weight", "deform_conv2d.mask", "deform_conv2d.offset",
                 "deform_conv2d.weight", "deform_roi_pool.offset", "deform_roi_pool.mask",
                 "bilinear_sample.points", "mul.other", "div.other", "pow.exponent",
                 "rmul.ndarray", "group_norm.weight", "matmul.other", "linear.weight",
                 "cross_entropy.target"):
        add(f"mut.{kind}.numpy_changed", "mutation", mutation(arr_build(kind), arr_mut),
            [kind.split(".")[1]])

    # running statistics read in backward (eval mode) and module buffers
    def bn_build(where):
        def build():
            Fn, nn = F(), md().nn
            x = leaf((2, 4, 6, 6), 0)
            if where == "module":
                m = nn.BatchNorm2d(4, dtype=np.float64).eval()
                y = m(dev(x))
                return y, [x], m
            mean, var = np.zeros(4), np.ones(4) * 2.0
            if where == "tensor":
                mean, var = md().Tensor(mean), md().Tensor(var)
            y = Fn.batch_norm(dev(x), mean, var, training=False)
            return y, [x], (mean, var)
        return build

    def bn_mut(c):
        if hasattr(c, "running_var"):
            c.running_var[...] = 9.0
            c.running_mean[...] = 1.0
        else:
            for a in c:
                arr = a.data if hasattr(a, "data") and not isinstance(a, np.ndarray) else a
                arr[...] = 9.0
    for where in ("numpy", "tensor", "module"):
        add(f"mut.batch_norm.running_stats_{where}", "mutation",
            mutation(bn_build(where), bn_mut), ["running_var", "running_mean"],
            backends=("numba", "reference"))

    # Tensor.data changed in place after forward (torch refuses via version counters)
    def td_build(kind):
        def build():
            Fn = F()
            x = leaf((2, 4, 6, 6), 0)
            w = leaf((6, 4, 3, 3), 1)
            if kind == "conv2d.input":
                y = Fn.conv2d(x, w, padding=1)
                return y, [x, w], x
            y = Fn.max_pool2d(x, 2)
            return y, [x], x
        return build
    for kind in ("conv2d.input", "max_pool2d.input"):
        add(f"mut.{kind}.tensor_data_changed", "mutation",
            mutation(td_build(kind), lambda t: t.data.__imul__(2.0)), ["input"],
            backends=("numba", "reference"))


# ------------------------------------------------------------------------------ empty inputs
def build_empty():
    def run(op, what):
        kw, leaves = op_specs()[op][1](np.float64)
        T = md().Tensor
        for key in list(kw):
            v = kw[key]
            if what == "batch0" and key in ("input", "offset", "mask", "x", "points") \
                    and op not in ("deform_roi_pool", "deform_ps_roi_pool"):
                a = host(v)[:0]
            elif what == "batch0" and op in ("deform_roi_pool", "deform_ps_roi_pool", "roi_pool",
                                           "roi_align") and key == "input":
                a = host(v)[:0]
            elif what == "rois0" and key in ("rois", "offset", "mask") and \
                    op in ("roi_pool", "roi_align", "deform_roi_pool", "deform_ps_roi_pool"):
                a = (host(v) if key != "rois" else v)[:0]
            elif what == "hw0" and key in ("input", "x"):
                a = host(v)[:, :, :0]
            elif what == "c0" and key in ("input", "x"):
                a = host(v)[:, :0]
            else:
                continue
            if key == "rois":
                kw[key] = np.asarray(a)
            else:
                l = T(np.ascontiguousarray(a), requires_grad=True)
                leaves.append(l)
                kw[key] = dev(l)
        if what == "batch0" and op in ("roi_pool", "roi_align", "deform_roi_pool",
                                       "deform_ps_roi_pool"):
            kw["rois"] = np.zeros((0, 5))
            for key in ("offset", "mask"):
                if key in kw:
                    l = T(host(kw[key])[:0], requires_grad=True)
                    kw[key] = dev(l)
        call = op_specs()[op][0]
        y = call(**kw)
        out = host(y)
        if out.size != 0 and what != "c0":
            return f"output of shape {out.shape} is not empty"
        if y.requires_grad:
            backward(y)
        return nonfinite([out])

    for op in ["conv2d", "deform_conv2d", "max_pool2d", "avg_pool2d", "roi_pool", "roi_align",
               "deform_roi_pool", "deform_ps_roi_pool", "bilinear_sample", "group_norm",
               "layer_norm", "instance_norm", "batch_norm", "linear", "log_softmax"]:
        whats = ["batch0", "c0"] if op in ("linear", "log_softmax") else ["batch0", "hw0", "c0"]
        if "roi" in op:
            whats.append("rois0")
        for what in whats:
            valid = what in ("batch0", "rois0") and op != "batch_norm"
            add(f"empty.{op}.{what}", "empty", lambda op=op, what=what: run(op, what),
                ["input", "x", "rois"], valid=valid)

    def ce0():
        x = leaf((0, 3), 0)
        y = F().cross_entropy(dev(x), np.zeros(0, np.int64))
        v = host(y)
        return None if np.isnan(v).all() or np.isfinite(v).all() else "bad"
    add("empty.cross_entropy.batch0", "empty", ce0, ["input", "target"])

    def bn_eval0():
        x = leaf((0, 4, 6, 6), 0)
        y = F().batch_norm(dev(x), stat(np.zeros(4)), stat(np.ones(4)), training=False)
        backward(y)
        return None if host(y).shape == (0, 4, 6, 6) else "wrong shape"
    add("empty.batch_norm.eval_batch0", "empty", bn_eval0, ["input"], valid=True)

    def getitem_empty():
        x = leaf((4, 3), 0)
        y = dev(x)[np.array([], dtype=np.int64)]
        backward(y)
        return None if host(x.grad).sum() == 0 else "gradient nonzero"
    add("empty.getitem.empty_index", "empty", getitem_empty, ["index"], valid=True)

    def sum_empty():
        x = leaf((0, 3), 0)
        y = dev(x).sum()
        y.backward()
        return None if float(host(y)) == 0 else "sum of nothing is not 0"
    add("empty.sum.empty_tensor", "empty", sum_empty, [], valid=True)

    def mean_empty():
        x = leaf((0, 3), 0)
        dev(x).mean()
        return None  # NaN, as numpy and torch
    add("empty.mean.empty_tensor", "empty", mean_empty, ["input", "empty"])

    def conv_module0():
        nn = md().nn
        m = nn.Conv2d(4, 6, 3, padding=1, dtype=np.float64)
        if BACKEND == "cuda":
            m.to("cuda")
        x = leaf((0, 4, 6, 6), 0)
        y = m(dev(x))
        backward(y)
        return None if host(y).shape == (0, 6, 6, 6) else f"shape {host(y).shape}"
    add("empty.nn.Conv2d.batch0", "empty", conv_module0, ["input"], valid=True)


# ------------------------------------------------------------------------------ state files
def build_files():
    def model():
        nn = md().nn
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))

    def good_state():
        return model().state_dict()

    tmp = lambda name: os.path.join(tempfile.mkdtemp(prefix="battery"), name)

    def load(make, then=None):
        def run():
            m = model()
            state = make()
            m.load_state_dict(state)
            if then is not None:
                return then(m)
            return None
        return run

    def write(name, writer):
        def make():
            path = tmp(name)
            writer(path)
            return path
        return make

    def npz_with(**changes):
        def writer(path):
            s = dict(good_state())
            s.update(changes)
            np.savez(path, **s)
        return writer

    def dict_with(**changes):
        def make():
            s = dict(good_state())
            for k, v in changes.items():
                if v is KeyError:
                    del s[k]
                else:
                    s[k] = v
            return s
        return make

    def fwd_train(m):
        m.train()
        m[1].momentum = None
        y = m(md().Tensor(np.random.default_rng(0).standard_normal((2, 2, 5, 5)),
                          dtype=np.float32))
        return nonfinite([host(y)])

    def fwd_eval(m):
        m.eval()
        y = m(md().Tensor(np.random.default_rng(0).standard_normal((2, 2, 5, 5)),
                          dtype=np.float32))
        return nonfinite([host(y)])

    W, NBT, RV = "0.weight", "1.num_batches_tracked", "1.running_var"
    f = [
        ("not_npz_text", write("state.npz", lambda p: open(p, "w").write("hello")), ["state.npz"]),
        ("npy_file", write("state.npy", lambda p: np.save(p, np.ones(3))), ["state.npy"]),
        ("pickle_file", write("state.pkl", lambda p: pickle.dump(good_state(), open(p, "wb"))),
         ["state.pkl"]),
        ("object_array_npz", write("state.npz", npz_with(**{W: np.array([None] * 54, object)
                                                             .reshape(3, 2, 3, 3)})),
         ["state.npz", W]),
        ("empty_file", write("state.npz", lambda p: open(p, "wb").close()), ["state.npz"]),
        ("directory", lambda: tempfile.mkdtemp(prefix="battery"), ["battery"]),
        ("bytes_path", lambda: write("state.npz", npz_with())().encode(), ["state.npz"]),
        ("missing_file", lambda: tmp("absent.npz"), ["absent.npz"]),
        ("truncated_npz", write("state.npz", lambda p: (npz_with()(p), os.truncate(p, 100))),
         ["state.npz"]),
        ("complex_npz", write("state.npz", npz_with(**{W: good_state()[W] + 1j})),
         [W]),
        ("complex_dict", dict_with(**{W: good_state()[W] + 1j}), [W]),
        ("fraction_into_int_buffer", dict_with(**{NBT: np.array(2.9)}), [NBT]),
        ("float_1e30_into_int_buffer", dict_with(**{NBT: np.array(1e30)}), [NBT]),
        ("nan_into_int_buffer", dict_with(**{NBT: np.array(np.nan)}), [NBT]),
        ("string_into_float_param", dict_with(**{W: np.full((3, 2, 3, 3), "a")}), [W]),
        ("bool_into_float_param", dict_with(**{W: np.ones((3, 2, 3, 3), bool)}), [W]),
        ("none_value", dict_with(**{W: None}), [W]),
        ("wrong_shape", dict_with(**{W: np.ones((3, 2, 3))}), [W]),
        ("wrong_shape_transposed", dict_with(**{W: np.ones((2, 3, 3, 3))}), [W]),
        ("missing_key", dict_with(**{W: KeyError}), [W]),
        ("extra_key", dict_with(**{"2.weight": np.ones(3)}), ["2.weight"]),
        ("state_is_list", lambda: list(good_state().values()), ["state"]),
        ("state_is_none", lambda: None, ["state"]),
        ("state_is_int", lambda: 3, ["state"]),
        ("key_not_str", lambda: {**good_state(), 5: np.ones(1)}, ["5"]),
    ]
    for name, make, names in f:
        add(f"file.load_state_dict.{name}", "file", load(make), names,
            refuse=name not in ("bool_into_float_param",),
            valid=name == "bool_into_float_param")
    # accepted at load, then used: a negative counter, a negative variance, NaN weights
    add("file.load_state_dict.negative_num_batches_tracked", "file",
        load(dict_with(**{NBT: np.array(-1)}), fwd_train), [NBT, "num_batches_tracked"],
        refuse=True)
    add("file.load_state_dict.int64_max_num_batches_tracked", "file",
        load(dict_with(**{NBT: np.array(2**63 - 1)}), fwd_train), [NBT, "num_batches_tracked"])
    add("file.load_state_dict.negative_running_var", "file",
        load(dict_with(**{RV: -np.ones(3, np.float32)}), fwd_eval), [RV, "running_var"],
        refuse=True)
    add("file.load_state_dict.npz_roundtrip", "file",
        load(write("state.npz", npz_with()), fwd_eval), [], valid=True)


# ------------------------------------------------------------------------------ norms, optim, gradcheck
def build_misc():

    # --- batch norm statistics
    def bn_negvar():
        x = leaf((2, 4, 6, 6), 0)
        y = F().batch_norm(dev(x), stat(np.zeros(4)), stat(-np.ones(4)))
        return nonfinite([host(y)]) or "accepted"
    add("issue.batch_norm.negative_running_var", "nonfinite", bn_negvar, ["running_var"],
        refuse=True)

    def bn_nanvar():
        x = leaf((2, 4, 6, 6), 0)
        F().batch_norm(dev(x), stat(np.zeros(4)), stat(np.full(4, np.nan)))
        return None
    add("batch_norm.nan_running_var_eval", "nonfinite", bn_nanvar, ["running_var"])

    def bn_alias(training):
        def run():
            x = leaf((2, 4, 6, 6), 0)
            buf = np.ones(4)
            y = F().batch_norm(x, buf, buf, training=training)
            backward(y)
            with md().backend("reference" if BACKEND == "numba" else "numba"):
                buf2 = np.ones(4)
                x2 = leaf((2, 4, 6, 6), 0)
                y2 = F().batch_norm(x2, buf2, buf2, training=training)
            d = differ([host(y), buf], [host(y2), buf2], "output/buffer")
            return (d + " between backends" if d else None) or "accepted aliased buffers"
        return run
    for tr in (True, False):
        add(f"issue.batch_norm.aliased_running_stats_training={tr}", "mutation", bn_alias(tr),
            ["running_mean", "running_var"], refuse=True, backends=("numba", "reference"))

    def bn_readonly():
        x = leaf((2, 4, 6, 6), 0)
        m, v = np.zeros(4), np.ones(4)
        m.flags.writeable = False
        F().batch_norm(x, m, v, training=False)
    add("batch_norm.readonly_stats_eval", "type", bn_readonly, ["running_mean"], valid=True,
        backends=("numba", "reference"))

    def bn_train1():
        x = leaf((1, 4, 1, 1), 0)
        F().batch_norm(dev(x), None, None, training=True)
        return "accepted"
    add("batch_norm.train_one_value", "empty", bn_train1, ["input"], refuse=True)

    # --- module constructors
    nn_cases = {
        "Conv2d(3,4,3,stride=0)": lambda nn: nn.Conv2d(3, 4, 3, stride=0),
        "Conv2d(3,4,3,groups=2)": lambda nn: nn.Conv2d(3, 4, 3, groups=2),
        "Conv2d(0,4,3)": lambda nn: nn.Conv2d(0, 4, 3),
        "Conv2d(3,4,0)": lambda nn: nn.Conv2d(3, 4, 0),
        "Conv2d(3,4,2**31)": lambda nn: nn.Conv2d(3, 4, 2**31),
        "Conv2d(3,4,3,groups=0)": lambda nn: nn.Conv2d(3, 4, 3, groups=0),
        "Conv2d(3.0,4,3)": lambda nn: nn.Conv2d(3.0, 4, 3),
        "Conv2d(3,4,3,dtype=int)": lambda nn: nn.Conv2d(3, 4, 3, dtype=np.int64),
        "DeformConv2d(4,4,3,offset_groups=3)": lambda nn: nn.DeformConv2d(4, 4, 3,
                                                                          offset_groups=3),
        "DeformConv2d(4,4,3,offset_lr_mult=-1)": lambda nn: nn.DeformConv2d(
            4, 4, 3, offset_lr_mult=-1.0),
        "BatchNorm2d(0)": lambda nn: nn.BatchNorm2d(0),
        "BatchNorm2d(4,eps=0)": lambda nn: nn.BatchNorm2d(4, eps=0),
        "BatchNorm2d(4,eps=-1)": lambda nn: nn.BatchNorm2d(4, eps=-1.0),
        "BatchNorm2d(4,momentum=2)": lambda nn: nn.BatchNorm2d(4, momentum=2.0),
        "BatchNorm2d(4,momentum=nan)": lambda nn: nn.BatchNorm2d(4, momentum=np.nan),
        "GroupNorm(3,4)": lambda nn: nn.GroupNorm(3, 4),
        "GroupNorm(0,4)": lambda nn: nn.GroupNorm(0, 4),
        "GroupNorm(2,4,eps=0)": lambda nn: nn.GroupNorm(2, 4, eps=0.0),
        "GroupNorm(2,4,eps=nan)": lambda nn: nn.GroupNorm(2, 4, eps=np.nan),
        "LayerNorm(4,eps=-1e-5)": lambda nn: nn.LayerNorm(4, eps=-1e-5),
        "InstanceNorm2d(4,eps=0)": lambda nn: nn.InstanceNorm2d(4, eps=0.0),
        "Linear(0,3)": lambda nn: nn.Linear(0, 3),
        "Linear(-1,3)": lambda nn: nn.Linear(-1, 3),
        "Linear(2**40,2**40)": lambda nn: nn.Linear(2**40, 2**40),
        "MaxPool2d(0)": lambda nn: nn.MaxPool2d(0),
        "AvgPool2d(2,padding=-1)": lambda nn: nn.AvgPool2d(2, padding=-1),
        "RoIAlign(0,1.0,2)": lambda nn: nn.RoIAlign(0, 1.0, 2),
        "RoIAlign(2,nan,2)": lambda nn: nn.RoIAlign(2, np.nan, 2),
        "RoIAlign(2,-1.0,2)": lambda nn: nn.RoIAlign(2, -1.0, 2),
        "RoIAlign(2,1.0,2**40)": lambda nn: nn.RoIAlign(2, 1.0, 2**40),
        "RoIPool(2,0.0)": lambda nn: nn.RoIPool(2, 0.0),
        "DeformRoIPool(2,1.0,2,0.1,0)": lambda nn: nn.DeformRoIPool(2, 1.0, 2, 0.1, 0),
        "DeformRoIPool(2,-1.0,2,0.1,4)": lambda nn: nn.DeformRoIPool(2, -1.0, 2, 0.1, 4),
        "DeformRoIPool(2,1.0,2,nan,4)": lambda nn: nn.DeformRoIPool(2, 1.0, 2, np.nan, 4),
        "DeformRoIPool(2,1.0,2,0.1,4,hidden=0)": lambda nn: nn.DeformRoIPool(2, 1.0, 2, 0.1, 4,
                                                                             hidden=0),
        "Sequential(3)": lambda nn: nn.Sequential(3),
        "Flatten(start_dim=-5)": lambda nn: nn.Flatten(start_dim=-5)(
            md().Tensor(np.ones((2, 3)))),
    }
    import re

    def nn_forward(m):
        """torch builds some of these and refuses at forward: run a forward too."""
        nn = md().nn
        x = md().Tensor(np.random.default_rng(0).standard_normal((2, 4, 6, 6)),
                        dtype=np.float32)
        if isinstance(m, (nn.RoIAlign, nn.RoIPool, nn.DeformRoIPool)):
            y = m(x, ROIS.astype(np.float32))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            y = m(x)
        else:
            return "accepted"
        return nonfinite([host(y)]) or "accepted (forward ran)"

    for name, make in nn_cases.items():
        arg = re.findall(r"(\w+)=", name)
        names = arg or ["in_channels", "out_channels", "kernel_size", "num_groups",
                        "num_features", "in_features", "output_size", "spatial_scale",
                        "groups", "argument 0", "sampling_ratio", "gamma"]
        if name == "Linear(2**40,2**40)":
            names = ["in_features", "out_features"]
        add(f"nn.{name}", "hyper", lambda make=make: nn_forward(make(md().nn)), names,
            refuse=True, dangerous="2**" in name)

    # --- optimisers
    def opt(make, steps=2, zero_grad=False, check=True):
        def run():
            optim = md().optim
            p = md().nn.Parameter(np.ones(3))
            o = make(optim, [p])
            for _ in range(steps):
                p.grad = md().Tensor(np.zeros(3) if zero_grad else np.full(3, 0.5))
                o.step()
            return nonfinite([host(p)], "parameter") if check else None
        return run
    optim_cases = {
        "SGD(lr=-1)": (lambda o, p: o.SGD(p, lr=-1.0), ["lr"], True),
        "SGD(lr=nan)": (lambda o, p: o.SGD(p, lr=np.nan), ["lr"], True),
        "SGD(lr=inf)": (lambda o, p: o.SGD(p, lr=np.inf), ["lr"], True),
        "SGD(lr=1e308)": (lambda o, p: o.SGD(p, lr=1e308), ["lr"], False),
        "SGD(lr='0.1')": (lambda o, p: o.SGD(p, lr="0.1"), ["lr"], True),
        "SGD(lr=None)": (lambda o, p: o.SGD(p, lr=None), ["lr"], True),
        "SGD(momentum=-0.5)": (lambda o, p: o.SGD(p, 0.1, momentum=-0.5), ["momentum"], True),
        "SGD(dampening=2)": (lambda o, p: o.SGD(p, 0.1, dampening=2.0), ["dampening"], True),
        "SGD(weight_decay=-1)": (lambda o, p: o.SGD(p, 0.1, weight_decay=-1.0),
                                 ["weight_decay"], True),
        "SGD(nesterov,momentum=0)": (lambda o, p: o.SGD(p, 0.1, nesterov=True), ["nesterov"],
                                     True),
        "SGD(params=[])": (lambda o, p: o.SGD([], 0.1), ["params"], True),
        "SGD(params=ndarray)": (lambda o, p: o.SGD([np.ones(3)], 0.1), ["params", "param"],
                                True),
        "SGD(params=duplicate)": (lambda o, p: o.SGD(p + p, 0.1), ["param", "params"], True),
        "SGD(params=None)": (lambda o, p: o.SGD(None, 0.1), ["params"], True),
        "SGD(params=group_no_params)": (lambda o, p: o.SGD([{"lr": 0.1}], 0.1), ["params"],
                                        True),
        "SGD(params=group_unknown_key)": (lambda o, p: o.SGD([{"params": p, "foo": 1}], 0.1),
                                          ["foo"], True),
        "Adam(eps=0)": (lambda o, p: o.Adam(p, eps=0.0), ["eps"], True),
        "Adam(eps=-1e-8)": (lambda o, p: o.Adam(p, eps=-1e-8), ["eps"], True),
        "Adam(eps=nan)": (lambda o, p: o.Adam(p, eps=np.nan), ["eps"], True),
        "Adam(lr=-1e-3)": (lambda o, p: o.Adam(p, lr=-1e-3), ["lr"], True),
        "Adam(betas=(1.0,0.999))": (lambda o, p: o.Adam(p, betas=(1.0, 0.999)), ["betas"],
                                    True),
        "Adam(betas=(0.9,1.0))": (lambda o, p: o.Adam(p, betas=(0.9, 1.0)), ["betas"], True),
        "Adam(betas=(-0.1,0.999))": (lambda o, p: o.Adam(p, betas=(-0.1, 0.999)), ["betas"],
                                     True),
        "Adam(betas=(nan,0.999))": (lambda o, p: o.Adam(p, betas=(np.nan, 0.999)), ["betas"],
                                    True),
        "Adam(betas=0.9)": (lambda o, p: o.Adam(p, betas=0.9), ["betas"], True),
        "Adam(betas=(0.9,))": (lambda o, p: o.Adam(p, betas=(0.9,)), ["betas"], True),
        "Adam(weight_decay=nan)": (lambda o, p: o.Adam(p, weight_decay=np.nan),
                                   ["weight_decay"], True),
        "Adam(lr=1e308)": (lambda o, p: o.Adam(p, lr=1e308), ["lr"], None),
        "Adam(eps=1e-300)": (lambda o, p: o.Adam(p, eps=1e-300), ["eps"], False),
    }
    for name, (make, names, refuse) in optim_cases.items():
        # refuse None: a finite result is not due either (lr=1e308 may overflow honestly)
        add(f"optim.{name}", "hyper", opt(make, check=refuse is not None), names,
            refuse=bool(refuse))
    add("issue.optim.Adam(eps=0).zero_grad_step", "hyper", opt(
        lambda o, p: o.Adam(p, eps=0.0), zero_grad=True), ["eps"], refuse=True)

    def grad_wrong_shape():
        optim = md().optim
        p = md().nn.Parameter(np.ones(3))
        o = optim.SGD([p], 0.1)
        p.grad = md().Tensor(np.ones(4))
        o.step()
        return "accepted"
    add("optim.SGD.step_grad_wrong_shape", "shape", grad_wrong_shape, ["grad"], refuse=True)

    def grad_wrong_dtype():
        optim = md().optim
        p = md().nn.Parameter(np.ones(3, np.float32))
        o = optim.Adam([p])
        p.grad = md().Tensor(np.ones(3, np.float64))
        o.step()
        return None if host(p).dtype == np.float64 and p.dtype == np.float32 else \
            (None if p.dtype == np.float32 else f"parameter became {p.dtype}")
    add("optim.Adam.step_grad_float64_for_float32", "dtype", grad_wrong_dtype, ["grad"])

    # --- gradcheck
    def gc(**kw):
        def run():
            x = md().Tensor(np.random.default_rng(0).standard_normal(5), requires_grad=True)
            fn = kw.pop("fn", lambda t: (t * t).sum())
            inputs = kw.pop("inputs", [x])
            r = md().gradcheck(fn, inputs, **kw)
            return None if r is True else f"returned {r!r}"
        return run
    gc_cases = [
        ("eps=0", dict(eps=0.0), ["eps"], True),
        ("eps=-1e-6", dict(eps=-1e-6), ["eps"], False),
        ("eps=nan", dict(eps=np.nan), ["eps"], True),
        ("eps=inf", dict(eps=np.inf), ["eps"], True),
        ("atol=-1", dict(atol=-1.0), ["atol"], True),
        ("rtol=nan", dict(rtol=np.nan), ["rtol"], True),
        ("max_entries=0,directions=0", dict(max_entries=0, directions=0),
         ["directions", "max_entries"], True),
        ("directions=-1,max_entries=0", dict(max_entries=0, directions=-1), ["directions"],
         True),
        ("max_entries=-1", dict(max_entries=-1), ["max_entries"], False),
        ("directions=2**40,max_entries=0", dict(max_entries=0, directions=2**40),
         ["directions"], False),
        ("seed=-1", dict(seed=-1), ["seed"], True),
        ("names_too_short", dict(names=[]), ["names"], True),
        ("fn_returns_float", dict(fn=lambda t: 3.0), ["fn"], True),
        ("fn_returns_none", dict(fn=lambda t: None), ["fn"], True),
        ("inputs_not_sequence", dict(inputs=5), ["inputs"], True),
        ("fn_not_callable", dict(fn=3), ["fn"], True),
    ]
    for name, kw, names, refuse in gc_cases:
        add(f"gradcheck.{name}", "hyper", gc(**kw), names, refuse=refuse,
            dangerous="2**" in name, backends=("numba", "reference"))

    def gc_float32():
        x = md().Tensor(np.ones(3, np.float32), requires_grad=True)
        md().gradcheck(lambda t: t.sum(), [x])
        return "accepted"
    add("gradcheck.float32_input", "dtype", gc_float32, ["input 0", "float64"], refuse=True,
        backends=("numba", "reference"))

    # --- Tensor construction and ops
    def tc(make, refuse=True):
        def run():
            make(md().Tensor)
            return "accepted" if refuse else None
        return run
    tensor_cases = [
        ("Tensor(complex)", lambda T: T(np.ones(3) + 1j), ["data"], True),
        ("Tensor(object)", lambda T: T(np.array([1, None], object)), ["data"], True),
        ("Tensor(str)", lambda T: T("abc"), ["data"], True),
        ("Tensor(None)", lambda T: T(None), ["data"], True),
        ("Tensor(ragged)", lambda T: T([[1, 2], [3]]), ["data"], True),
        ("Tensor(dtype=int64)", lambda T: T([1.0], dtype=np.int64), ["dtype"], True),
        ("Tensor(dtype=float16)", lambda T: T([1.0], dtype=np.float16), ["dtype"], True),
        ("Tensor(dict)", lambda T: T({1: 2}), ["data"], True),
        ("Tensor(float16_array)", lambda T: T(np.ones(3, np.float16)), ["data"], False),
        ("Tensor(uint64_max)", lambda T: T(np.array([2**64 - 1], np.uint64)), ["data"], False),
        ("Tensor(1e308).float()", lambda T: T(np.array([1e308])).float(), ["data"], False),
        ("reshape(-1,-1)", lambda T: T(np.ones(6)).reshape(-1, -1), ["shape"], True),
        ("reshape(2**64)", lambda T: T(np.ones(6)).reshape(2**64), ["shape"], True),
        ("reshape(7)", lambda T: T(np.ones(6)).reshape(7), ["shape"], True),
        ("reshape(2.0,3)", lambda T: T(np.ones(6)).reshape(2.0, 3), ["shape"], True),
        ("reshape(-6,-1)", lambda T: T(np.ones(6)).reshape(-6, -1), ["shape"], True),
        ("sum(dim=5)", lambda T: T(np.ones((2, 3))).sum(dim=5), ["dim"], True),
        ("sum(dim=1.5)", lambda T: T(np.ones((2, 3))).sum(dim=1.5), ["dim"], True),
        ("sum(dim=(0,0))", lambda T: T(np.ones((2, 3))).sum(dim=(0, 0)), ["dim"], True),
        ("mean(dim=2**63)", lambda T: T(np.ones((2, 3))).mean(dim=2**63), ["dim"], True),
        ("permute(0,0)", lambda T: F().permute(T(np.ones((2, 3))), (0, 0)), ["dims"], True),
        ("transpose(0,9)", lambda T: F().transpose(T(np.ones((2, 3))), 0, 9), ["dim"], True),
        ("flatten(start_dim=9)", lambda T: F().flatten(T(np.ones((2, 3))), 9), ["start_dim"],
         True),
        ("log_softmax(dim=9)", lambda T: F().log_softmax(T(np.ones((2, 3))), 9), ["dim"], True),
        ("getitem[10]", lambda T: T(np.ones(3))[10], ["index"], True),
        ("getitem[2**63]", lambda T: T(np.ones(3))[np.array([2**62])], ["index"], True),
        ("getitem[float_array]", lambda T: T(np.ones(3))[np.array([0.5])], ["index"], True),
        ("getitem['a']", lambda T: T(np.ones(3))["a"], ["index"], True),
        ("getitem[None]", lambda T: T(np.ones(3))[None], ["index"], False),
        ("to('tpu')", lambda T: T(np.ones(3)).to("tpu"), ["device"], True),
        ("backward_no_grad", lambda T: T(np.ones(1)).backward(), ["grad", "requires_grad"],
         True),
        ("backward_wrong_shape", lambda T: (T(np.ones(3), requires_grad=True) * 2).backward(
            np.ones(4)), ["grad"], True),
        ("backward_complex_grad", lambda T: (T(np.ones(3), requires_grad=True) * 2).backward(
            np.ones(3) + 1j), ["grad"], True),
        ("backward_str_grad", lambda T: (T(np.ones(3), requires_grad=True) * 2).backward(
            "abc"), ["grad"], True),
        ("add_shapes_mismatch", lambda T: T(np.ones(3)) + T(np.ones(4)), ["shape", "other"],
         True),
        ("mul_string", lambda T: T(np.ones(3)) * "a", ["other", "second operand"], True),
        ("matmul_mismatch", lambda T: T(np.ones((2, 3))) @ T(np.ones((4, 2))),
         ["other", "shape"], True),
        ("matmul_0d", lambda T: T(np.ones(())) @ T(np.ones(())), ["input", "other", "operand"],
         True),
        ("pow_complex", lambda T: T(np.ones(3)) ** 1j, ["exponent", "second operand"], True),
        ("cast_int", lambda T: F().cast(T(np.ones(3)), np.int64), ["dtype"], True),
        ("set_backend('cuda')", lambda T: md().set_backend("cuda"), ["name"], True),
        ("cross_entropy_target_-1", lambda T: F().cross_entropy(T(np.ones((2, 3))), [0, -1]),
         ["target"], True),
        ("cross_entropy_target_3", lambda T: F().cross_entropy(T(np.ones((2, 3))), [0, 3]),
         ["target"], True),
        ("cross_entropy_target_1.5", lambda T: F().cross_entropy(T(np.ones((2, 3))), [0, 1.5]),
         ["target"], True),
        ("cross_entropy_target_nan", lambda T: F().cross_entropy(T(np.ones((2, 3))),
                                                                 [0, np.nan]), ["target"], True),
        ("cross_entropy_target_2**63", lambda T: F().cross_entropy(
            T(np.ones((2, 3))), np.array([0, 2**63 - 1])), ["target"], True),
        ("cross_entropy_reduction", lambda T: F().cross_entropy(T(np.ones((2, 3))), [0, 1],
                                                                reduction="avg"),
         ["reduction"], True),
    ]
    for name, make, names, refuse in tensor_cases:
        cls = "type" if any(k in name for k in ("str", "None", "dict", "'a'", "ragged")) \
            else "dtype" if any(k in name for k in ("complex", "object", "int64", "float16",
                                                    "uint64", "float_array", "cast")) \
            else "shape" if any(k in name for k in ("reshape", "mismatch", "shape", "dim",
                                                    "getitem", "permute", "0d")) \
            else "hyper"
        add(f"tensor.{name}", cls, tc(make, refuse), names, refuse=refuse,
            dangerous="2**" in name, backends=("numba", "reference"))


# ------------------------------------------------------------------------------ modern family
def build_modern():
    """Issue 14's ops and modules: dcnv3, dcnv4, multi_scale_deform_attn, gelu, softmax,
    layer_norm(channels_last=True), nn.DCNv3 / DCNv4 / MultiScaleDeformableAttention."""
    CUDA_FEW = ("numba", "reference", "cuda")
    HOST = ("numba", "reference")

    def spec(op, dtype=np.float64):
        return op_specs()[op][1](dtype)

    def arr(kw, key):
        v = kw[key]
        return np.array(host(v)) if not isinstance(v, np.ndarray) else v.copy()

    def with_(op, **changes):
        """Run ``op`` with keyword changes (arrays become device Tensors); forward, backward."""
        def run():
            kw, _ = spec(op)
            for k, v in changes.items():
                v = v(kw) if callable(v) else v
                kw[k] = dev(md().Tensor(v)) if isinstance(v, np.ndarray) and \
                    k != "spatial_shapes" else v
            return call_op(op, kw)
        return run

    # --- geometry: G·D vs channels, P vs kernel, N / H_out / W_out, M < G·3P, remove_center
    geometry = {
        "dcnv3.group_3_of_4_channels": ("dcnv3", dict(group=3), ["group"]),
        "dcnv3.group_4_offsets_of_group_2": ("dcnv3", dict(group=4), ["group", "offset"]),
        "dcnv3.kernel_5_offsets_of_kernel_3": ("dcnv3", dict(kernel_size=5, padding=2),
                                               ["offset"]),
        "dcnv3.mask_P_8": ("dcnv3", dict(mask=lambda kw: arr(kw, "mask")[..., :16]), ["mask"]),
        "dcnv3.offset_odd_channels": ("dcnv3", dict(offset=lambda kw: arr(kw, "offset")[..., :35]),
                                      ["offset"]),
        "dcnv3.offset_batch_1": ("dcnv3", dict(offset=lambda kw: arr(kw, "offset")[:1]),
                                 ["offset"]),
        "dcnv3.mask_batch_3": ("dcnv3", dict(mask=lambda kw: np.concatenate(
            [arr(kw, "mask")] * 2)[:3]), ["mask"]),
        "dcnv3.offset_H_out_4": ("dcnv3", dict(offset=lambda kw: arr(kw, "offset")[:, :4]),
                                 ["offset"]),
        "dcnv3.mask_W_out_4": ("dcnv3", dict(mask=lambda kw: arr(kw, "mask")[:, :, :4]),
                               ["mask"]),
        "dcnv3.channels_first_input": ("dcnv3", dict(input=lambda kw: np.ascontiguousarray(
            arr(kw, "input").transpose(0, 3, 1, 2))), ["input", "offset", "group"]),
        "dcnv3.input_5d": ("dcnv3", dict(input=lambda kw: arr(kw, "input")[None]), ["input"]),
        "dcnv3.offset_3d": ("dcnv3", dict(offset=lambda kw: arr(kw, "offset")[0]), ["offset"]),
        "dcnv3.kernel_padding_too_small": ("dcnv3", dict(kernel_size=9, padding=0),
                                           ["kernel", "padding", "kernel_size"]),
        "dcnv4.M_53_below_G3P": ("dcnv4", dict(offset_mask=lambda kw: arr(kw, "offset_mask")
                                                [..., :53]), ["offset_mask"]),
        "dcnv4.M_54_exact": ("dcnv4", dict(offset_mask=lambda kw: arr(kw, "offset_mask")
                                            [..., :54]), ["offset_mask"]),
        "dcnv4.M_1000_padding": ("dcnv4", dict(offset_mask=lambda kw: np.concatenate(
            [arr(kw, "offset_mask")] * 18, axis=-1)[..., :1000]), ["offset_mask"]),
        "dcnv4.group_4_M_56": ("dcnv4", dict(group=4), ["group", "offset_mask"]),
        "dcnv4.offset_mask_batch_1": ("dcnv4", dict(offset_mask=lambda kw: arr(
            kw, "offset_mask")[:1]), ["offset_mask"]),
        "dcnv4.offset_mask_W_out_6": ("dcnv4", dict(offset_mask=lambda kw: np.concatenate(
            [arr(kw, "offset_mask")] * 2, axis=2)[:, :, :6]), ["offset_mask"]),
    }
    valid_geometry = {"dcnv4.M_54_exact", "dcnv4.M_1000_padding"}
    for op in ("dcnv3", "dcnv4"):
        for k in ((2, 2), (3, 5), (1, 1), 4, (5, 3), 2):
            geometry[f"{op}.remove_center_kernel_{k}"] = (
                op, dict(kernel_size=k, remove_center=True, padding=0),
                ["remove_center", "kernel_size"])
    for name, (op, changes, names) in geometry.items():
        add(f"modern.{name}", "shape", cross_checked(with_(op, **changes)), names,
            refuse=name not in valid_geometry, valid=name in valid_geometry)

    # --- integers near and past 2**31: the valid ones must equal a small equivalent
    def same_as(op, big, small, crop):
        """``big`` integer arguments give the numbers of ``small`` ones (offsets cropped to
        the output grid by ``crop``)."""
        def run():
            results = []
            for changes in (big, small):
                kw, _ = spec(op)
                kw.update(changes)
                for key in ("offset", "mask", "offset_mask"):
                    if key in kw:
                        kw[key] = dev(md().Tensor(np.ascontiguousarray(arr(kw, key)[crop]),
                                                  requires_grad=True))
                verdict = call_op(op, kw)
                if verdict:
                    return verdict
                results.append(list(LAST_RESULT))
            return differ(results[0], results[1], "output/gradient")
        return run
    M = 2**31 - 1
    for op in ("dcnv3", "dcnv4"):
        add(f"modern.{op}(stride=2**31-1,padding=2**31-1)", "hyper",
            same_as(op, dict(stride=M, padding=M), dict(stride=20, padding=20),
                    (slice(None), slice(0, 3), slice(0, 3))),
            ["stride", "padding"], valid=True, dangerous=True)
        add(f"modern.{op}(stride=(1,2**31-1),padding=(1,2**31-1))", "hyper",
            same_as(op, dict(stride=(1, M), padding=(1, M)), dict(stride=(1, 20),
                                                                   padding=(1, 20)),
                    (slice(None), slice(None), slice(0, 3))),
            ["stride", "padding"], valid=True, dangerous=True)
        for name, kw in {"padding=2**31-1": dict(padding=M),
                         "padding=2**30,stride=1": dict(padding=2**30),
                         "kernel=2**31-1": dict(kernel_size=M),
                         "dilation=2**31-1": dict(dilation=M),
                         "group=2**31-1": dict(group=M),
                         "group=-2**31": dict(group=-2**31),
                         "stride=np.int64(2**31)": dict(stride=np.int64(2**31)),
                         "padding=(1,-1)": dict(padding=(1, -1)),
                         "kernel=(3,3,3)": dict(kernel_size=(3, 3, 3)),
                         "stride=np.float64(1)": dict(stride=np.float64(1)),
                         "group=np.bool_": dict(group=np.bool_(True)),
                         "offset_scale=np.float32(1)": dict(offset_scale=np.float32(1)),
                         "offset_scale=1e308": dict(offset_scale=1e308),
                         "offset_scale=-1e-308": dict(offset_scale=-1e-308)}.items():
            valid = name in ("offset_scale=np.float32(1)", "offset_scale=1e308",
                             "offset_scale=-1e-308")
            def big(op=op, kw=kw):
                kwargs, _ = spec(op)
                kwargs.update(kw)
                return call_op(op, kwargs)
            add(f"modern.{op}({name})", "hyper", cross_checked(big),
                list(kw) + ["offset", "mask", "offset_mask", "kernel", "output"],
                refuse=not valid, valid=valid, dangerous="2**" in name)
    # kernel 1 with any dilation samples only the centre
    for op in ("dcnv3", "dcnv4"):
        def k1(op=op):
            def shrink(kw, dilation):
                kw.update(kernel_size=1, padding=0, dilation=dilation)
                if op == "dcnv3":
                    kw["offset"] = dev(md().Tensor(arr(kw, "offset")[..., :4]))
                    kw["mask"] = dev(md().Tensor(arr(kw, "mask")[..., :2]))
                else:
                    kw["offset_mask"] = dev(md().Tensor(arr(kw, "offset_mask")[..., :8]))
            kw, _ = spec(op)
            shrink(kw, M)
            verdict = call_op(op, kw)
            got = list(LAST_RESULT)
            kw, _ = spec(op)
            shrink(kw, 1)
            call_op(op, kw)
            return verdict or differ(got, list(LAST_RESULT), "output/gradient")
        add(f"modern.{op}(kernel=1,dilation=2**31-1)", "hyper", k1, ["dilation"], valid=True,
            dangerous=True)

    # --- offsets / locations / weights: NaN, inf, 1e30, 2**63 read 0 and get gradient 0
    def far(op, key, val, where="all"):
        def run():
            kw, _ = spec(op)
            a = np.array(arr(kw, key), dtype=np.float64)
            if where == "all":
                a[...] = val
            else:
                a[1, ..., 0] = val
            kw[key] = dev(md().Tensor(a))
            verdict = call_op(op, kw, expect_finite=False)
            bad = nonfinite(LAST_RESULT, "output/gradient")
            return verdict or bad
        return run
    for val in (np.nan, np.inf, -np.inf, 1e30, -1e30, 2.0**63, 1e18, 1e308):
        for op, key in (("dcnv3", "offset"), ("dcnv4", "offset_mask"),
                        ("multi_scale_deform_attn", "sampling_locations")):
            for where in ("all", "item1_x"):
                if op == "dcnv4" and where == "all":  # the modulation scalars too: not 0
                    continue
                add(f"modern.{op}.{key}={val!r}.{where}", "nonfinite", cross_checked(
                    far(op, key, val, where), finite_only=True), [key],
                    dangerous=val in (1e30, 2.0**63, 1e308) and where == "all",
                    backends=CUDA_FEW if val in (1e30, 2.0**63) else HOST)

    def scale_far(op, s):
        def run():
            kw, _ = spec(op)
            kw["offset_scale"] = s
            call_op(op, kw, expect_finite=False)
            return nonfinite(LAST_RESULT, "output/gradient")
        return run
    for op in ("dcnv3", "dcnv4"):
        for s in (1e30, 1e300, -1e300):
            add(f"modern.{op}.offset_scale={s!r}_far", "nonfinite", cross_checked(
                scale_far(op, s), finite_only=True), ["offset_scale"], valid=True)

    def dcnv4_softmax_extreme(val):
        def run():
            kw, _ = spec("dcnv4")
            om = arr(kw, "offset_mask")
            om[..., 18:27] = val  # group 0's nine logits, all extreme
            kw.update(offset_mask=dev(md().Tensor(om)), softmax=True)
            call_op("dcnv4", kw, expect_finite=False)
            if np.isfinite(val):
                return nonfinite(LAST_RESULT, "output/gradient")
            return None
        return run
    for val in (1e30, -1e30, 1e308, np.inf, np.nan):
        add(f"modern.dcnv4.softmax_logits={val!r}", "nonfinite",
            cross_checked(dcnv4_softmax_extreme(val), finite_only=True), ["offset_mask"])

    # --- spatial_shapes
    def ss(value, names=("spatial_shapes",)):
        def run():
            kw, _ = spec("multi_scale_deform_attn")
            kw["spatial_shapes"] = value() if callable(value) else value
            return call_op("multi_scale_deform_attn", kw)
        return run
    ss_cases = {
        "float_array": (np.array([[2., 3.], [1., 2.]]), True),
        "float_list": ([[2.0, 3.0], [1.0, 2.0]], True),
        "bool_in_list": ([[2, 3], [True, 2]], True),
        "bool_array": (np.ones((2, 2), bool), True),
        "negative": (np.array([[-2, -3], [1, 2]]), True),
        "zero_level": (np.array([[2, 4], [0, 5]]), True),
        "sum_too_small": (np.array([[2, 3], [1, 1]]), True),
        "sum_too_large": (np.array([[2, 3], [2, 2]]), True),
        "swapped_rows_same_sum": (np.array([[1, 2], [2, 3]]), False),
        "three_levels": (np.array([[2, 3], [1, 1], [1, 1]]), True),
        "one_level": (np.array([[2, 4]]), True),
        "shape_(2,3)": (np.array([[2, 3, 1], [1, 2, 1]]), True),
        "shape_(4,)": (np.array([2, 3, 1, 2]), True),
        "empty_(0,2)": (np.zeros((0, 2), np.int64), True),
        "int32": (SHAPES.astype(np.int32), False),
        "uint8": (SHAPES.astype(np.uint8), False),
        "uint64": (SHAPES.astype(np.uint64), False),
        "tuple_of_tuples": (((2, 3), (1, 2)), False),
        "numpy_ints_in_list": ([[np.int64(2), np.int32(3)], [np.uint8(1), 2]], False),
        "object_ints": (SHAPES.astype(object), False),
        "ragged": ([[2, 3], [1]], True),
        "string": ("2,3;1,2", True),
        "none": (None, True),
        "tensor": (lambda: md().Tensor(SHAPES.astype(np.float64)), True),
        "2**31_level": (np.array([[2**31, 1], [1, 2]]), True),
        "2**63_python": ([[2**63, 1], [1, 2]], True),
        "2**64-1_uint64": (np.array([[2**64 - 1, 1], [1, 2]], np.uint64), True),
        "products_wrap_int64": ([[2**31 - 1, 2**31 - 1], [2**31 - 1, 2**31 - 1]], True),
        "huge_sum_wraps_to_8": ([[2**32, 2**32], [1, 8]], True),
        "int64_wrap_to_S": (np.array([[2**62, 4], [1, 8]]), True),
    }
    for name, (value, refuse) in ss_cases.items():
        add(f"modern.msda.spatial_shapes.{name}", "dtype" if name in (
            "float_array", "float_list", "bool_in_list", "bool_array", "int32", "uint8",
            "uint64", "object_ints") else "shape", cross_checked(ss(value)),
            ["spatial_shapes"], refuse=refuse, valid=not refuse,
            dangerous="2**" in name or "wrap" in name)

    def msda_shape(change, names):
        def run():
            kw, _ = spec("multi_scale_deform_attn")
            for k, f in change.items():
                kw[k] = dev(md().Tensor(f(arr(kw, k))))
            return call_op("multi_scale_deform_attn", kw)
        return run
    msda_cases = {
        "locations_M_1": ({"sampling_locations": lambda a: a[:, :, :1]}, ["sampling_locations"]),
        "locations_L_3": ({"sampling_locations": lambda a: np.concatenate([a, a[:, :, :, :1]], 3)},
                          ["sampling_locations"]),
        "locations_last_3": ({"sampling_locations": lambda a: np.concatenate([a, a[..., :1]], -1)},
                             ["sampling_locations"]),
        "locations_batch_1": ({"sampling_locations": lambda a: a[:1]}, ["sampling_locations"]),
        "weights_P_1": ({"attention_weights": lambda a: a[..., :1]}, ["attention_weights"]),
        "weights_Q_3": ({"attention_weights": lambda a: a[:, :3]}, ["attention_weights"]),
        "weights_batch_1": ({"attention_weights": lambda a: a[:1]}, ["attention_weights"]),
        "value_batch_1": ({"value": lambda a: a[:1]}, ["sampling_locations", "value"]),
        "value_S_9": ({"value": lambda a: np.concatenate([a, a[:, :1]], 1)},
                      ["spatial_shapes", "value"]),
        "value_3d": ({"value": lambda a: a.reshape(2, 8, 6)}, ["value"]),
        "value_M_4_D_1": ({"value": lambda a: np.repeat(a[..., :1], 2, axis=2)},
                          ["sampling_locations", "value"]),
        "value_D_7": ({"value": lambda a: np.concatenate([a] * 3, -1)[..., :7]}, None),
    }
    for name, (change, names) in msda_cases.items():
        add(f"modern.msda.{name}", "shape", cross_checked(msda_shape(change, names)),
            names or ["value"], refuse=names is not None, valid=names is None)

    # --- layouts: Fortran order, negative strides, every other element, zero strides, big-endian
    # float64; as arrays and as Tensors
    def layout(op, key, how, as_tensor):
        def run():
            kw, _ = spec(op)
            a = arr(kw, key)
            if how == "broadcast":  # every item (or row) the first one's: a zero stride
                a = np.repeat(a[:1], a.shape[0], axis=0)
            call_op(op, dict(kw, **{key: dev(md().Tensor(a))}))
            want = list(LAST_RESULT)
            kw, _ = spec(op)
            if how == "fortran":
                v = np.asfortranarray(a)
            elif how == "broadcast":
                v = np.broadcast_to(a[:1], a.shape)
            elif how == "big_endian":  # float64 as read from a file written big-endian
                v = a.astype(">f8")
            elif how == "reversed":
                v = a[::-1].copy()[::-1]
            elif how == "transposed":
                v = np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1)
            else:  # every other element of the last axis of a larger array
                big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
                big[..., ::2] = a
                big[..., 1::2] = np.nan
                v = big[..., ::2]
            if as_tensor:
                v = md().Tensor(v)
                if BACKEND == "cuda":
                    v = v.to("cuda")
            kw[key] = v
            verdict = call_op(op, kw, expect_finite=False)
            if not isinstance(kw[key], md().Tensor):
                # the caller's array as given: the gradients of the others must match
                want, got = want[:1], LAST_RESULT[:1]
            else:
                got = list(LAST_RESULT)
            return verdict or differ(got, want, "output/gradient", rtol=1e-12, atol=1e-12)
        return run
    layout_keys = {"dcnv3": ["input", "offset", "mask"], "dcnv4": ["input", "offset_mask"],
                   "multi_scale_deform_attn": ["value", "sampling_locations",
                                               "attention_weights"],
                   "gelu": ["input"], "softmax": ["input"], "layer_norm_cl": ["input", "weight"]}
    for op, keys in layout_keys.items():
        for key in keys:
            for how in ("fortran", "reversed", "transposed", "strided", "broadcast",
                        "big_endian"):
                for as_t in (False, True):
                    # a strided Tensor reaches the kernels as a view: dangerous (Numba and
                    # CUDA check no bounds), so in the reference and cuda subsets too
                    strided = how == "strided" and as_t
                    add(f"modern.layout.{op}.{key}.{how}{'.tensor' if as_t else '.array'}",
                        "shape", layout(op, key, how, as_t), [key], valid=True,
                        dangerous=strided,
                        backends=CUDA_FEW if strided and op in (
                            "dcnv3", "multi_scale_deform_attn", "softmax") else HOST)

    # --- dtypes: mixed, integer, float16, float32 throughout
    def dtypes(op, key, conv, whole=None):
        def run():
            kw, _ = spec(op, whole or np.float64)
            if key is not None:
                v = conv(arr(kw, key))
                kw[key] = dev(md().Tensor(v)) if isinstance(v, np.ndarray) and \
                    v.dtype in (np.float32, np.float64) else v
            return call_op(op, kw, expect_finite=False)
        return run
    for op, keys in layout_keys.items():
        for key in keys:
            if len(keys) > 1:  # gelu and softmax take one array: float32 alone is fine
                add(f"modern.dtype.{op}.{key}_float32_others_float64", "dtype",
                    dtypes(op, key, lambda a: a.astype(np.float32)), [key, "dtype"],
                    refuse=True)
            add(f"modern.dtype.{op}.{key}_int32_array", "dtype",
                dtypes(op, key, lambda a: np.round(a * 3).astype(np.int32)), [key, "dtype"])
        add(f"modern.dtype.{op}.all_float32", "dtype", cross_checked(
            dtypes(op, None, None, np.float32)), ["dtype"], valid=True)

    # --- devices (cuda only: one argument left on the host)
    for op, keys in (("dcnv3", ["offset"]), ("multi_scale_deform_attn", ["attention_weights"]),
                     ("dcnv4", ["offset_mask"])):
        for key in keys:
            def mixed(op=op, key=key):
                kw, _ = spec(op)
                kw[key] = md().Tensor(arr(kw, key))
                return call_op(op, kw)
            add(f"modern.device.{op}.{key}_on_host", "type", mixed, [key, "device"],
                refuse=True, dangerous=True, backends=("cuda",))

    # --- empty axes: the batch is valid (torch), the others refused naming the argument
    def empty(op, cuts, valid):
        def run():
            kw, _ = spec(op)
            for key, sl in cuts.items():
                kw[key] = dev(md().Tensor(np.ascontiguousarray(arr(kw, key)[sl]),
                                          requires_grad=True))
            y = op_specs()[op][0](**kw)
            out = host(y)
            if valid and out.size != 0:
                return f"output of shape {out.shape} is not empty"
            if y.requires_grad:
                backward(y)
            for key in cuts:
                g = kw[key].grad
                if g is not None and host(g).shape != host(kw[key]).shape:
                    return f"{key} gradient shape {host(g).shape}"
            return nonfinite([out])
        return run
    N0, H0 = (slice(0, 0),), (slice(None), slice(0, 0))
    W0, C0 = (slice(None), slice(None), slice(0, 0)), (Ellipsis, slice(0, 0))
    empties = {
        "dcnv3.batch0": ("dcnv3", dict(input=N0, offset=N0, mask=N0), True),
        "dcnv3.H0": ("dcnv3", dict(input=H0), False),
        "dcnv3.W0": ("dcnv3", dict(input=W0), False),
        "dcnv3.C0": ("dcnv3", dict(input=C0), False),
        "dcnv3.batch0_offset_only": ("dcnv3", dict(offset=N0, mask=N0), False),
        "dcnv4.batch0": ("dcnv4", dict(input=N0, offset_mask=N0), True),
        "dcnv4.C0": ("dcnv4", dict(input=C0), False),
        "dcnv4.M0": ("dcnv4", dict(offset_mask=C0), False),
        "msda.batch0": ("multi_scale_deform_attn", dict(value=N0, sampling_locations=N0,
                                                        attention_weights=N0), True),
        "msda.Q0": ("multi_scale_deform_attn", dict(sampling_locations=H0,
                                                    attention_weights=H0), False),
        "msda.M0": ("multi_scale_deform_attn", dict(value=W0, sampling_locations=W0,
                                                    attention_weights=W0), False),
        "msda.D0": ("multi_scale_deform_attn", dict(value=C0), False),
        "msda.P0": ("multi_scale_deform_attn", dict(sampling_locations=(Ellipsis, slice(0, 0),
                                                                        slice(None)),
                                                    attention_weights=C0), False),
        "gelu.batch0": ("gelu", dict(input=N0), True),
        "gelu.last0": ("gelu", dict(input=C0), True),
        "softmax.batch0": ("softmax", dict(input=N0), True),
        "softmax.dim0": ("softmax", dict(input=H0), True),
        "layer_norm_cl.batch0": ("layer_norm_cl", dict(input=N0), True),
        "layer_norm_cl.C0": ("layer_norm_cl", dict(input=C0, weight=C0, bias=C0), False),
    }
    for name, (op, cuts, valid) in empties.items():
        add(f"modern.empty.{name}", "empty", empty(op, cuts, valid), list(cuts) + [
            "spatial_shapes", "input"], valid=valid,
            backends=CUDA_FEW if name.endswith("batch0") or op in ("softmax", "gelu") else HOST)

    def msda_L0():
        kw, _ = spec("multi_scale_deform_attn")
        kw.update(spatial_shapes=np.zeros((0, 2), np.int64),
                  value=dev(md().Tensor(arr(kw, "value")[:, :0])),
                  sampling_locations=dev(md().Tensor(arr(kw, "sampling_locations")[:, :, :, :0])),
                  attention_weights=dev(md().Tensor(arr(kw, "attention_weights")[:, :, :, :0])))
        return call_op("multi_scale_deform_attn", kw)
    add("modern.empty.msda.L0_S0", "empty", msda_L0, ["spatial_shapes", "value"])

    # --- the caller's arrays changed between forward and backward
    def mut_build(op, keys):
        def build():
            kw, leaves = spec(op)
            given = {}
            for key in keys:
                given[key] = arr(kw, key) if key != "spatial_shapes" else (
                    SHAPES.copy() if key != "spatial_shapes_list" else SHAPES.tolist())
                kw[key] = given[key]
            y = op_specs()[op][0](**kw)
            return y, [l for l in leaves if l.requires_grad], given
        return build

    def scramble(given):
        for a in given.values():
            if isinstance(a, list):
                a.reverse()
            elif a.dtype.kind in "iu":
                a[...] = a[::-1].copy()  # [[1, 2], [2, 3]]: S is still 8
            else:
                a *= 3.0
                a += 0.25
    mut_cases = {"dcnv3": [["offset"], ["mask"], ["input"], ["offset", "mask"]],
                 "dcnv4": [["offset_mask"], ["input"]],
                 "multi_scale_deform_attn": [["spatial_shapes"], ["sampling_locations"],
                                             ["attention_weights"], ["value"],
                                             ["spatial_shapes", "sampling_locations"]],
                 "layer_norm_cl": [["input"], ["weight"]]}
    for op, keysets in mut_cases.items():
        for keys in keysets:
            # with every Tensor leaf replaced by an array, the gradient is that of the rest
            add(f"modern.mut.{op}.{'+'.join(keys)}_numpy_changed", "mutation",
                mutation(mut_build(op, keys), scramble), keys,
                backends=CUDA_FEW if op == "multi_scale_deform_attn" and
                keys == ["spatial_shapes"] else HOST)

    # a Tensor's .data changed in place after forward: no op can own that without copying
    # every input (torch refuses at backward through its version counters; minidcn has none,
    # like mut.conv2d.input.tensor_data_changed)
    def td_build(op, key):
        def build():
            kw, leaves = spec(op)
            t = md().Tensor(arr(kw, key))
            kw[key] = t
            return op_specs()[op][0](**kw), leaves, t  # the replaced leaf's gradient: None
        return build
    for op, key in (("dcnv3", "offset"), ("multi_scale_deform_attn", "sampling_locations")):
        add(f"modern.mut.{op}.{key}_tensor_data_changed", "mutation",
            mutation(td_build(op, key), lambda t: t.data.__imul__(3.0)), [key],
            backends=HOST)

    def ss_list_mut():
        def build():
            kw, leaves = spec("multi_scale_deform_attn")
            shapes = [[2, 3], [1, 2]]
            kw["spatial_shapes"] = shapes
            return op_specs()["multi_scale_deform_attn"][0](**kw), leaves, shapes
        return mutation(build, lambda s: s.reverse())
    add("modern.mut.multi_scale_deform_attn.spatial_shapes_list_changed", "mutation",
        ss_list_mut(), ["spatial_shapes"])

    # --- modules: constructors, forward arguments, state files
    def attention(*args, **kwargs):
        return lambda nn: nn.MultiScaleDeformableAttention(*args, **kwargs)
    ctor = {
        "DCNv3(0)": lambda nn: nn.DCNv3(0), "DCNv3(-4)": lambda nn: nn.DCNv3(-4),
        "DCNv3(6,group=4)": lambda nn: nn.DCNv3(6, group=4),
        "DCNv3(8,group=0)": lambda nn: nn.DCNv3(8, group=0),
        "DCNv3(8,group=16)": lambda nn: nn.DCNv3(8, group=16),
        "DCNv3(8,kernel_size=2,remove_center=True)": lambda nn: nn.DCNv3(
            8, kernel_size=2, padding=1, remove_center=True),
        "DCNv3(8,kernel_size=(3,5),remove_center=True)": lambda nn: nn.DCNv3(
            8, kernel_size=(3, 5), padding=(1, 2), remove_center=True),
        "DCNv3(8,kernel_size=0)": lambda nn: nn.DCNv3(8, kernel_size=0),
        "DCNv3(8,kernel_size=2**31)": lambda nn: nn.DCNv3(8, kernel_size=2**31),
        "DCNv3(8,stride=2**31)": lambda nn: nn.DCNv3(8, stride=2**31),
        "DCNv3(8,padding=-1)": lambda nn: nn.DCNv3(8, padding=-1),
        "DCNv3(8,padding=3)": lambda nn: nn.DCNv3(8, padding=3),
        "DCNv3(8,offset_scale=nan)": lambda nn: nn.DCNv3(8, offset_scale=np.nan),
        "DCNv3(8,remove_center=1)": lambda nn: nn.DCNv3(8, remove_center=1),
        "DCNv3(8.0)": lambda nn: nn.DCNv3(8.0),
        "DCNv3(2**31,group=1)": lambda nn: nn.DCNv3(2**31, group=1),
        "DCNv3(2**20,group=1)": lambda nn: nn.DCNv3(2**20, group=1),
        "DCNv3(8,kernel_size=2**16+1,padding=2**15)": lambda nn: nn.DCNv3(
            8, kernel_size=2**16 + 1, padding=2**15),
        "DCNv4(8,kernel_size=2**16+1,padding=2**15)": lambda nn: nn.DCNv4(
            8, kernel_size=2**16 + 1, padding=2**15),
        "DCNv4(8,stride=2)": lambda nn: nn.DCNv4(8, stride=2),
        "DCNv4(6,group=4)": lambda nn: nn.DCNv4(6, group=4),
        "DCNv4(0)": lambda nn: nn.DCNv4(0),
        "DCNv4(8,dilation=0)": lambda nn: nn.DCNv4(8, dilation=0),
        "DCNv4(8,group=True)": lambda nn: nn.DCNv4(8, group=True),
        "MultiScaleDeformableAttention(10,num_heads=4)": attention(10, 4, 1, 1),
        "MultiScaleDeformableAttention(0,num_heads=1)": attention(0, 1, 1, 1),
        "MultiScaleDeformableAttention(8,num_heads=0)": attention(8, 0, 1, 1),
        "MultiScaleDeformableAttention(8,2,num_levels=0)": attention(8, 2, 0, 1),
        "MultiScaleDeformableAttention(8,2,1,num_points=-1)": attention(8, 2, 1, -1),
        "MultiScaleDeformableAttention(embed_dims=2**31)": attention(2**31, 1, 1, 1),
        "MultiScaleDeformableAttention(embed_dims=2**20)": attention(2**20, 1, 1, 1),
        "MultiScaleDeformableAttention(8,2,num_levels=2**16,num_points=2**16)":
            attention(8, 2, 2**16, 2**16),
        "MultiScaleDeformableAttention(8.0,2)": attention(8.0, 2),
        "MultiScaleDeformableAttention(8,2,dtype=int)": attention(8, 2, dtype=np.int64),
    }
    import re
    for name, make in ctor.items():
        arg = re.findall(r"(\w+)=", name)
        names = (arg or []) + ["channels", "embed_dims", "num_heads", "num_levels",
                               "num_points", "group", "kernel_size"]
        add(f"modern.nn.{name}", "hyper", lambda make=make: (make(md().nn), "accepted")[1],
            names, refuse=True, dangerous="2**" in name)

    def module(kind):
        nn = md().nn
        g = np.random.default_rng(0)
        if kind == "msda":
            m = nn.MultiScaleDeformableAttention(8, 2, 2, 2, generator=g, dtype=np.float64)
        else:
            m = getattr(nn, kind)(8, group=2, dtype=np.float64) if _takes_dtype(nn, kind) \
                else getattr(nn, kind)(8, group=2).double()
        return m.to("cuda") if BACKEND == "cuda" else m

    def msda_args(**changes):
        rng = np.random.default_rng(1)
        args = dict(query=rng.standard_normal((2, 3, 8)), reference_points=rng.random((2, 3, 2)),
                    value=rng.standard_normal((2, 8, 8)), spatial_shapes=SHAPES.copy())
        for k, v in changes.items():
            args[k] = v(args[k]) if callable(v) else v
        return {k: (dev(md().Tensor(v)) if k != "spatial_shapes" and isinstance(v, np.ndarray)
                    else v) for k, v in args.items()}

    def msda_forward(**changes):
        def run():
            m = module("msda")
            y = m(**msda_args(**changes))
            backward(y)
            return nonfinite([host(y)])
        return run
    fwd = {
        "query_E_7": (dict(query=lambda a: a[..., :7]), ["query", "embed_dims"]),
        "value_E_7": (dict(value=lambda a: a[..., :7]), ["value", "embed_dims"]),
        "value_batch_1": (dict(value=lambda a: a[:1]), ["value"]),
        "reference_points_3": (dict(reference_points=lambda a: np.concatenate([a, a[..., :1]], -1)),
                               ["reference_points"]),
        "reference_points_per_level": (dict(reference_points=lambda a: np.stack([a, a], 2)), None),
        "reference_points_3_levels": (dict(reference_points=lambda a: np.stack([a] * 3, 2)),
                                      ["reference_points"]),
        "reference_points_Q_2": (dict(reference_points=lambda a: a[:, :2]), ["reference_points"]),
        "reference_points_nan": (dict(reference_points=lambda a: np.full_like(a, np.nan)), None),
        "reference_points_1e308": (dict(reference_points=lambda a: np.full_like(a, 1e308)), None),
        "spatial_shapes_3_levels": (dict(spatial_shapes=np.array([[2, 2], [1, 2], [1, 2]])),
                                    ["spatial_shapes", "num_levels"]),
        "spatial_shapes_sum_9": (dict(spatial_shapes=np.array([[2, 3], [1, 3]])),
                                 ["spatial_shapes"]),
        "spatial_shapes_float": (dict(spatial_shapes=SHAPES.astype(float)), ["spatial_shapes"]),
        "query_float32": (dict(query=lambda a: a.astype(np.float32)), ["query", "dtype"]),
        "query_2d": (dict(query=lambda a: a[0]), ["query"]),
    }
    for name, (changes, names) in fwd.items():
        add(f"modern.nn.MultiScaleDeformableAttention.forward.{name}",
            "shape" if "float" not in name else "dtype", msda_forward(**changes),
            names or ["reference_points"], refuse=names is not None, valid=names is None,
            backends=HOST)

    def dcn_forward(kind, make_x, names):
        def run():
            m = module(kind)
            y = m(make_x())
            backward(y)
            return nonfinite([host(y)])
        return run
    X8 = lambda: np.random.default_rng(2).standard_normal((2, 5, 5, 8))
    for kind in ("DCNv3", "DCNv4"):
        for name, (make_x, names, refuse) in {
                "channels_first": (lambda: dev(md().Tensor(X8().transpose(0, 3, 1, 2).copy())),
                                   ["input"], True),
                "channels_6": (lambda: dev(md().Tensor(X8()[..., :6])), ["input"], True),
                "3d": (lambda: dev(md().Tensor(X8()[0])), ["input"], True),
                "float32": (lambda: dev(md().Tensor(X8().astype(np.float32))),
                            ["input", "dtype"], True),
                "numpy": (X8, ["input"], False),
                "batch0": (lambda: dev(md().Tensor(X8()[:0])), ["input"], False),
                "H1_W1": (lambda: dev(md().Tensor(X8()[:, :1, :1])), ["input"], False),
                "nan": (lambda: dev(md().Tensor(np.full((1, 3, 3, 8), np.nan))), ["input"],
                        False),
        }.items():
            def run(kind=kind, make_x=make_x, name=name):
                m = module(kind)
                y = m(make_x())
                backward(y)
                if name == "nan":
                    return None
                return nonfinite([host(y)])
            add(f"modern.nn.{kind}.forward.{name}", "shape", run, names, refuse=refuse,
                valid=not refuse, backends=CUDA_FEW if name == "batch0" else HOST)

    def small_module(make, shape):
        def run():
            m = make(md().nn)
            x = leaf(shape, 3)
            y = m(dev(x))
            backward(y)
            return nonfinite([host(y), host(x.grad)])
        return run
    small = {
        "LayerNorm(4,channels_last=True)(N,C,H,W)": (
            lambda nn: nn.LayerNorm(4, channels_last=True).double(), (2, 4, 3, 3), ["input"], True),
        "LayerNorm(4,channels_last=True)(N,H,W,C)": (
            lambda nn: nn.LayerNorm(4, channels_last=True).double(), (2, 3, 3, 4), ["input"],
            False),
        "LayerNorm(4,channels_last=1)": (
            lambda nn: nn.LayerNorm(4, channels_last=1), (2, 3, 3, 4), ["channels_last"], True),
        "Softmax(dim=5)": (lambda nn: nn.Softmax(5), (2, 3), ["dim"], True),
        "Softmax(dim=1.5)": (lambda nn: nn.Softmax(1.5), (2, 3), ["dim"], True),
        "Softmax(dim=-1)": (lambda nn: nn.Softmax(-1), (2, 3), ["dim"], False),
        "GELU()(N,0)": (lambda nn: nn.GELU(), (2, 0), ["input"], False),
    }
    for name, (make, shape, names, refuse) in small.items():
        add(f"modern.nn.{name}", "hyper" if refuse else "shape", small_module(make, shape),
            names, refuse=refuse, valid=not refuse, backends=HOST)

    def module_host_input(kind):
        def run():
            m = module(kind)  # on the battery's device (cuda here)
            if kind == "msda":
                args = msda_args()
                args["query"] = md().Tensor(host(args["query"]))
                y = m(**args)
            else:
                y = m(md().Tensor(X8()))
            backward(y)
            return "accepted"
        return run
    for kind in ("DCNv3", "msda"):
        add(f"modern.device.nn.{kind}.input_on_host", "type", module_host_input(kind),
            ["input", "query", "device", "cpu"], refuse=True, dangerous=True,
            backends=("cuda",))

    def module_shapes_mutated():
        def build():
            m = module("msda")
            args = msda_args()
            shapes = args["spatial_shapes"]
            q = leaf((2, 3, 8), 1)
            args["query"] = dev(q)
            return m(**args), [q] + list(m.parameters()), shapes
        return mutation(build, lambda shapes: shapes.__setitem__(slice(None), shapes[::-1].copy()))
    add("modern.mut.nn.MultiScaleDeformableAttention.spatial_shapes_numpy_changed", "mutation",
        module_shapes_mutated(), ["spatial_shapes"], backends=HOST)

    def state(kind, edit, names, then_forward=False):
        def run():
            m = module(kind)
            s = {k: np.array(v) for k, v in m.state_dict().items()}
            s = edit(s)
            m2 = module(kind)
            m2.load_state_dict(s)
            if then_forward:
                x = X8() if kind != "msda" else None
                y = m2(dev(md().Tensor(x))) if kind != "msda" else m2(**msda_args())
                return nonfinite([host(y)])
            return None
        return run

    def first_key(s, word):
        return next(k for k in s if word in k)

    def edit_shape(word):
        def edit(s):
            k = first_key(s, word)
            s[k] = s[k][..., :-1]
            return s
        return edit

    def drop(word):
        def edit(s):
            del s[first_key(s, word)]
            return s
        return edit

    def to_kind(word, dtype):
        def edit(s):
            k = first_key(s, word)
            s[k] = s[k].astype(dtype)
            return s
        return edit

    def npz_roundtrip(s):
        path = os.path.join(tempfile.mkdtemp(prefix="battery"), "block.npz")
        np.savez(path, **s)
        return path
    for kind, word in (("DCNv3", "weight"), ("DCNv4", "weight"), ("msda", "sampling_offsets")):
        for name, edit, refuse in (("wrong_shape", edit_shape(word), True),
                                   ("missing_key", drop(word), True),
                                   ("complex", to_kind(word, np.complex128), True),
                                   ("object", to_kind(word, object), True),
                                   ("npz_roundtrip", npz_roundtrip, False)):
            add(f"modern.file.{kind}.load_state_dict.{name}", "file",
                state(kind, edit, [word, "state", "block.npz", "."], then_forward=not refuse),
                [word, "state", "block.npz", "."], refuse=refuse, valid=not refuse,
                backends=HOST)

    def other_module_state():
        nn = md().nn
        src = nn.MultiScaleDeformableAttention(16, 4, 2, 2, dtype=np.float64).state_dict()
        module("msda").load_state_dict(src)
        return "accepted"
    add("modern.file.msda.load_state_dict.embed_dims_16_into_8", "file", other_module_state,
        ["sampling_offsets", "value_proj", "attention_weights", "output_proj"], refuse=True,
        backends=HOST)


def _takes_dtype(nn, kind):
    import inspect
    return "dtype" in inspect.signature(getattr(nn, kind)).parameters


# ------------------------------------------------------------------------------ issue repros
def build_issue():
    def unmutated(make):
        """The gradient of the same call without the mutation (the expected one)."""
        x, y = make()
        y.sum().backward()
        return host(x.grad)

    def verdict(x, ref):
        return differ([host(x.grad)], [ref])

    def roi_crash():
        import minidcn
        import minidcn.functional as F

        def make():
            np.random.seed(0)
            x = minidcn.Tensor(np.random.rand(2, 3, 6, 6), requires_grad=True)    # float64
            rois = np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]])
            return x, F.roi_align(dev(x), rois, 2, sampling_ratio=2)
        ref = unmutated(make)
        np.random.seed(0)
        x = minidcn.Tensor(np.random.rand(2, 3, 6, 6), requires_grad=True)    # float64
        rois = np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]])
        y = F.roi_align(dev(x), rois, 2, sampling_ratio=2)
        rois[1, 0] = -1e6            # the caller reuses its buffer
        y.sum().backward()           # interpreter dies
        return verdict(x, ref)
    add("issue.roi_align.rois_mutated_-1e6", "mutation", roi_crash, ["rois"])

    def big_roi(rois, scale, ratio=0, op="roi_align"):
        def run():
            x = leaf((1, 2, 4, 4), 0)
            r = np.array(rois, dtype=np.float64)
            if op == "roi_align":
                y = F().roi_align(dev(x), r, 1, spatial_scale=scale, sampling_ratio=ratio)
            elif op == "deform_roi_pool":
                y = F().deform_roi_pool(dev(x), r, None, 1, spatial_scale=scale,
                                        sampling_ratio=ratio)
            else:
                y = F().roi_pool(dev(x), r, 1, spatial_scale=scale)
            backward(y)
            return nonfinite([host(y)])
        return run
    # the first three need more than 2**20 samples per bin in the kernels' own (finite)
    # arithmetic: roi_align and deform_roi_pool must refuse them
    over_limit = ("issue.sample_limit_overflow", "sample_limit_overflow_both_axes",
                  "sample_limit_overflow_scale_1e-300")
    big = [
        ("issue.sample_limit_overflow", [[0, -1.5e308, 0, 1.5e308, 4e302]], 1e-302),
        ("sample_limit_overflow_both_axes", [[0, -1.5e308, -1.5e308, 1.5e308, 1.5e308]], 1e-302),
        ("sample_limit_overflow_scale_1e-300", [[0, -1e308, -1e308, 1e308, 1e308]], 1e-300),
        ("sample_limit_wrap_int64", [[0, 0, 0, 3e9, 3e9]], 1.0),
        ("sample_limit_wrap_int64_b", [[0, 0, 0, 4.3e9, 4.3e9]], 1.0),
        ("sample_limit_just_over", [[0, 0, 0, 1025, 1025]], 1.0),
        ("sample_limit_1e10", [[0, 0, 0, 1e10, 1]], 1.0),
        ("huge_box_scale_1e308", [[0, 0, 0, 4, 4]], 1e308),
        ("huge_box_subnormal_scale", [[0, 0, 0, 4, 4]], 5e-324),
        ("inf_box", [[0, -np.inf, -np.inf, np.inf, np.inf]], 1.0),
        ("nan_box", [[0, np.nan, 0, 3, 3]], 1.0),
    ]
    for name, rois, scale in big:
        for op in ("roi_align", "deform_roi_pool", "roi_pool"):
            add(f"{'issue.' if name.startswith('issue') else ''}{op}.{name.replace('issue.', '')}",
                "nonfinite", big_roi(rois, scale, 0, op), ["rois", "spatial_scale",
                                                           "sampling_ratio"],
                refuse=name in over_limit and op != "roi_pool", dangerous=True)
    # deform_roi_pool with an offset that moves the box far: gamma * offset * w
    def far_offset(val, gamma=0.1):
        def run():
            x = leaf((1, 2, 4, 4), 0)
            off = np.full((1, 2, 1, 1), val)
            y = F().deform_roi_pool(dev(x), np.array([[0, 0, 0, 3, 3.]]), off, 1,
                                    sampling_ratio=0, gamma=gamma)
            backward(y)
            return None
        return run
    for val in (1e308, -1e308, 1e15, 2.0**31, 2.0**63):
        add(f"deform_roi_pool.offset_far={val!r}", "nonfinite", far_offset(val),
            ["offset"], dangerous=True)

    def gc_eps0():
        x = md().Tensor(np.ones(3), requires_grad=True)
        r = md().gradcheck(lambda t: (t * t).sum(), [x], eps=0)
        return f"returned {r}"
    add("issue.gradcheck(eps=0)", "hyper", gc_eps0, ["eps"], refuse=True,
        backends=("numba", "reference"))

    def gc_nothing():
        x = md().Tensor(np.ones(3), requires_grad=True)
        r = md().gradcheck(lambda t: (t * t).sum(), [x], max_entries=0, directions=0)
        return f"returned {r} having checked nothing"
    add("issue.gradcheck(max_entries=0,directions=0)", "hyper", gc_nothing,
        ["max_entries", "directions"], refuse=True, backends=("numba", "reference"))

    def dc_stride64():
        x, o, w = leaf((1, 2, 5, 5), 0), leaf((1, 18, 1, 1), 1), leaf((3, 2, 3, 3), 2)
        y = F().deform_conv2d(dev(x), dev(o), dev(w), stride=2**64)
        backward(y)
        return None
    add("issue.deform_conv2d(stride=2**64)", "hyper", dc_stride64, ["stride"], dangerous=True)

    def conv_stride62():
        x, w = leaf((1, 2, 5, 5), 0), leaf((3, 2, 3, 3), 2)
        y = F().conv2d(dev(x), dev(w), stride=2**62)
        backward(y)
        return None
    add("issue.conv2d(stride=2**62)", "hyper", conv_stride62, ["stride"], dangerous=True)

    def mp_huge():
        x = leaf((1, 2, 5, 5), 0)
        y = F().max_pool2d(dev(x), 2**32, padding=2**31)
        backward(y)
        return None
    add("issue.max_pool2d(x,2**32,padding=2**31)", "hyper", mp_huge,
        ["kernel_size", "padding"], dangerous=True)

    def pool_huge(op, **kw):
        def run():
            x = leaf((1, 2, 5, 5), 0)
            y = getattr(F(), op)(dev(x), **kw)
            backward(y)
            return nonfinite([host(y)])
        return run
    for op in ("max_pool2d", "avg_pool2d"):
        for k, kw in {"k=2**31,p=2**30": dict(kernel_size=2**31, padding=2**30),
                      "k=2**62,p=2**61": dict(kernel_size=2**62, padding=2**61),
                      "k=3,p=2**40": dict(kernel_size=3, padding=2**40),
                      "k=2,stride=2**63": dict(kernel_size=2, stride=2**63),
                      "k=2,p=1,ceil": dict(kernel_size=2, padding=1, ceil_mode=True),
                      "k=5,p=2,ceil": dict(kernel_size=5, padding=2, ceil_mode=True)}.items():
            if op == "avg_pool2d" and "ceil" not in k and "p=" in k and "2**" not in k:
                pass
            add(f"{op}({k})", "hyper", pool_huge(op, **kw), ["kernel_size", "padding",
                                                             "stride", "ceil_mode"],
                dangerous=True)
    add("max_pool2d(k=3,dilation=2**40,p=1)", "hyper",
        pool_huge("max_pool2d", kernel_size=3, dilation=2**40, padding=1),
        ["dilation", "kernel_size"], dangerous=True)

    def conv_huge(**kw):
        def run():
            x, w = leaf((1, 2, 5, 5), 0), leaf((3, 2, 3, 3), 2)
            y = F().conv2d(dev(x), dev(w), **kw)
            backward(y)
            return nonfinite([host(y)])
        return run
    for k, kw in {"padding=2**20": dict(padding=2**20), "padding=2**40": dict(padding=2**40),
                  "dilation=2**40,padding=2**40": dict(dilation=2**40, padding=2**40),
                  "stride=2**63,padding=1": dict(stride=2**63, padding=1)}.items():
        add(f"conv2d({k})", "hyper", conv_huge(**kw), ["padding", "dilation", "stride"],
            dangerous=True)

    def dconv_huge(**kw):
        def run():
            x, w = leaf((1, 2, 5, 5), 0), leaf((3, 2, 3, 3), 2)
            Fn = F()
            s = kw.get("stride", 1)
            out = 1 if s > 5 else 3
            o = leaf((1, 18, out, out), 1)
            y = Fn.deform_conv2d(dev(x), dev(o), dev(w), **kw)
            backward(y)
            return nonfinite([host(y)])
        return run
    for k, kw in {"stride=2**62": dict(stride=2**62), "stride=2**63": dict(stride=2**63),
                  "dilation=2**62": dict(dilation=2**62)}.items():
        add(f"deform_conv2d({k})", "hyper", dconv_huge(**kw), ["stride", "dilation", "offset"],
            dangerous=True)

    def conv0(backend_pair=False):
        x, w = leaf((0, 2, 5, 5), 0), leaf((3, 2, 3, 3), 2)
        y = F().conv2d(dev(x), dev(w))
        backward(y)
        return None if host(y).shape == (0, 3, 3, 3) else f"shape {host(y).shape}"
    add("issue.conv2d.batch0", "empty", conv0, ["input"], valid=True)

    def mp0():
        x = leaf((0, 2, 4, 4), 0)
        y = F().max_pool2d(dev(x), 2)
        backward(y)
        return None if host(x.grad).shape == (0, 2, 4, 4) else "grad shape"
    add("issue.max_pool2d.batch0_backward", "empty", mp0, ["input"], valid=True)

    def rroi(rois_mut):
        def run():
            nn = md().nn
            m = nn.RoIAlign(2, 1.0, 2)
            ref = unmutated(lambda: (lambda x: (x, m(dev(x), np.array(
                [[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]]))))(leaf((2, 3, 6, 6), 0)))
            x = leaf((2, 3, 6, 6), 0)
            rois = np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]])
            y = m(dev(x), rois)
            rois[1, 0] = rois_mut
            y.sum().backward()
            return verdict(x, ref)
        return run
    add("issue.nn.RoIAlign.rois_mutated_-1e6", "mutation", rroi(-1e6), ["rois"])
    add("issue.nn.RoIAlign.rois_mutated_nan", "mutation", rroi(np.nan), ["rois"])

    def roipool_tensor():
        def make():
            x = leaf((2, 3, 6, 6), 0)
            return x, F().roi_pool(x, md().Tensor(np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]])), 2)
        ref = unmutated(make)
        x = leaf((2, 3, 6, 6), 0)
        r = md().Tensor(np.array([[0, 0, 0, 3, 3.], [1, 1, 1, 4, 4.]]))
        y = F().roi_pool(x, r, 2)
        r.data[1, 0] = -1e6
        y.sum().backward()
        return verdict(x, ref)
    add("issue.roi_pool.rois_tensor_data_mutated_-1e6", "mutation", roipool_tensor, ["rois"],
        backends=("numba", "reference"))

    def getitem_issue():
        x = md().Tensor(np.zeros(4), requires_grad=True)
        idx = np.array([0, 1])
        y = dev(x)[idx]
        idx[:] = [2, 0]  # arbitrary later reuse of the index buffer
        backward(y)
        g = host(x.grad)
        return None if g[2] == 0 and g[0] != 0 and g[1] != 0 else f"gradient {g.tolist()}"
    add("issue.getitem.index_mutated", "mutation", getitem_issue, ["index"])


def build_all():
    if CASES:
        return
    build_issue()
    build_generic()
    build_mutations()
    build_empty()
    build_files()
    build_misc()
    build_modern()


# ------------------------------------------------------------------------------ worker
def classify_exception(err, names):
    msg = f"{type(err).__name__}: {err}"
    if isinstance(err, MemoryError):
        return "allocates-huge", msg
    if isinstance(err, (ValueError, TypeError)) and any(n in str(err) for n in names):
        return "refused-clear", msg
    return "refused-unclear", msg


def run_case(cid):
    c = CASES[cid]
    t0 = time.perf_counter()
    np.seterr(all="ignore")
    try:
        verdict = c["fn"]()
    except Exception as err:  # noqa: BLE001 - classifying every failure is the point
        outcome, msg = classify_exception(err, c["names"])
        tb = traceback.extract_tb(err.__traceback__)
        where = f" [{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}]" if tb else ""
        return dict(outcome=outcome, message=msg[:400] + where,
                    seconds=round(time.perf_counter() - t0, 3))
    if isinstance(verdict, tuple):  # (outcome, note)
        outcome, verdict = verdict
        if c["refuse"]:
            outcome, verdict = "silently-wrong", "accepted an invalid call; " + verdict
        return dict(outcome=outcome, message=verdict,
                    seconds=round(time.perf_counter() - t0, 3))
    if verdict is None and c["refuse"]:
        verdict = "accepted an invalid call"
    outcome = "ok" if verdict is None else "silently-wrong"
    return dict(outcome=outcome, message=verdict or "", seconds=round(time.perf_counter() - t0, 3))


def warm_up():
    """Compile the common kernels once (numba caches them to disk afterwards).  The CUDA
    simulator compiles nothing: no warm-up there."""
    if BACKEND == "cuda":
        return
    for name in op_specs():
        for dtype in (np.float64, np.float32):
            try:
                kw, _ = op_specs()[name][1](dtype)
                call_op(name, kw)
            except Exception:  # noqa: BLE001 - a broken op shows up in its cases
                pass


def worker(backend, mem_gib):
    import resource
    global BACKEND
    BACKEND = backend
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a case prints goes to stderr, not into the result stream
    limit = int(mem_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import threading
    threading.stack_size(1 << 20)
    sys.path.insert(0, ROOT)
    import minidcn
    if backend in ("numba", "reference"):
        minidcn.set_backend(backend)
    build_all()
    warm_up()
    out.write("READY\n")
    for line in sys.stdin:
        cid = line.strip()
        if not cid:
            continue
        sys.stderr.write(f"\n=== CASE {cid}\n")
        sys.stderr.flush()
        res = run_case(cid)
        res["id"] = cid
        out.write(json.dumps(res) + "\n")


# ------------------------------------------------------------------------------ parent
class Worker:
    def __init__(self, backend, mem_gib, log_dir, n):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OPENBLAS_NUM_THREADS="1",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   NUMBA_NUM_THREADS=os.environ.get("NUMBA_NUM_THREADS", "2"))
        if backend == "cuda":
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        self.err_path = os.path.join(log_dir, f"worker{n}.stderr")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--backend", backend,
             "--mem-gib", str(mem_gib)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env,
            cwd=ROOT, bufsize=0)
        self.buf = b""

    def readline(self, timeout):
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return ""  # EOF: the worker died
                self.buf += chunk
            elif self.proc.poll() is not None:
                return ""
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def send(self, cid):
        self.proc.stdin.write((cid + "\n").encode())
        self.proc.stdin.flush()

    def stderr_tail(self, n=400):
        self.err.flush()
        with open(self.err_path, "rb") as f:
            data = f.read().decode(errors="replace")
        tail = data.rsplit("=== CASE", 1)[-1]
        tail = tail.split("\n", 1)[1] if "\n" in tail else ""
        return " ".join(tail.split())[-n:]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def run_all(ids, backend, timeout, mem_gib, log_dir, progress=True):
    results = {}
    pending = list(ids)
    n_started = 0
    w = None
    while pending:
        if w is None:
            w = Worker(backend, mem_gib, log_dir, n_started)
            n_started += 1
            ready = w.readline(900)
            if ready != "READY":
                tail = w.stderr_tail(2000)
                w.kill()
                raise SystemExit(f"worker failed to start: {ready!r}\n{tail}")
        cid = pending.pop(0)
        t0 = time.monotonic()
        w.send(cid)
        line = w.readline(timeout)
        if line:
            res = json.loads(line)
        elif line is None:
            res = dict(id=cid, outcome="hang", message=f"no answer in {timeout} s",
                       seconds=timeout)
            w.kill()
            w = None
        else:
            rc = w.proc.wait()
            sig = -rc if rc < 0 else None
            name = signal.Signals(sig).name if sig else f"exit {rc}"
            res = dict(id=cid, outcome="crash", message=f"{name}: {w.stderr_tail()}",
                       seconds=round(time.monotonic() - t0, 3))
            w.kill()
            w = None
        results[cid] = res
        if progress:
            print(f"[{len(results):4d}/{len(ids)}] {res['outcome']:16s} {cid}", flush=True)
    if w is not None:
        w.proc.stdin.close()
        w.kill()
    return results


def summary(results, backend):
    outcomes = ["refused-clear", "refused-unclear", "crash", "hang", "allocates-huge",
                "silently-wrong", "ok"]
    table = Counter((CASES[cid]["cls"], r["outcome"]) for cid, r in results.items())
    lines = [f"backend {backend}: {len(results)} cases", "",
             "| class | " + " | ".join(outcomes) + " | total |",
             "|---" * (len(outcomes) + 2) + "|"]
    for cls in CLASSES + ("all",):
        row = [sum(v for (c, o), v in table.items() if (c == cls or cls == "all") and o == oc)
               for oc in outcomes]
        if sum(row):
            lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    refused_valid = [cid for cid, r in results.items()
                     if CASES[cid]["valid"] and r["outcome"].startswith("refused")]
    lines += ["", f"valid calls refused: {len(refused_valid)}"]
    lines += [f"  {cid}: {results[cid]['message'][:160]}" for cid in refused_valid]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numba", choices=("numba", "reference", "cuda"))
    p.add_argument("--out")
    p.add_argument("--subset", default="all", choices=("all", "dangerous"))
    p.add_argument("--only", default="", help="keep the cases whose id contains one of these "
                   "comma-separated substrings")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--mem-gib", type=float, default=None)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    mem = args.mem_gib or (16.0 if args.backend == "cuda" else 4.0)
    if args.worker:
        return worker(args.backend, mem)
    build_all()
    ids = [cid for cid, c in CASES.items()
           if args.backend in c["backends"]
           and (args.subset == "all" or c["dangerous"])
           and any(part in cid for part in args.only.split(","))]
    if args.list:
        for cid in ids:
            print(CASES[cid]["cls"], cid)
        print(f"{len(ids)} cases")
        return
    t0 = time.monotonic()
    log_dir = tempfile.mkdtemp(prefix=f"battery-{args.backend}-")
    results = run_all(ids, args.backend, args.timeout, mem, log_dir)
    hangs = [cid for cid, r in results.items() if r["outcome"] == "hang"]
    if hangs:  # confirm with a longer timeout in a fresh worker (JIT compiles can be slow)
        again = run_all(hangs, args.backend, args.timeout * 3, mem, log_dir)
        for cid, r in again.items():
            if r["outcome"] != "hang":
                r["message"] = (f"first run: no answer in {args.timeout} s; rerun took "
                                f"{r.get('seconds')} s: " + r["message"])
            results[cid] = r
    elapsed = time.monotonic() - t0
    text = summary(results, args.backend)
    print(text)
    print(f"elapsed {elapsed:.0f} s; worker stderr in {log_dir}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        rows = [dict(id=cid, cls=CASES[cid]["cls"], backend=args.backend,
                     valid=CASES[cid]["valid"], **{k: v for k, v in r.items() if k != "id"})
                for cid, r in results.items()]
        with open(args.out, "w") as f:
            json.dump(dict(backend=args.backend, elapsed_s=round(elapsed, 1), results=rows),
                      f, indent=1)
        md_path = os.path.splitext(args.out)[0] + ".md"
        with open(md_path, "w") as f:
            f.write(text + "\n\n| id | class | outcome | message |\n|---|---|---|---|\n")
            for r in rows:
                msg = r["message"].replace("|", "\\|").replace("\n", " ")[:200]
                f.write(f"| `{r['id']}` | {r['cls']} | {r['outcome']} | {msg} |\n")


if __name__ == "__main__":
    main()
