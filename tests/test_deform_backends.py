"""The fast bilinear-sampling and deformable-convolution kernels (numba_cpu and cuda).

Each is held to the reference kernels to 1e-10 in float64, forward and every gradient, over
groups, offset groups, mask or none, stride, padding and dilation.  The numba kernels must
also be deterministic (bitwise the same for 1 or 2 threads and across runs), give the same
numbers however the batch is chunked, accept any memory layout, and stay finite for NaN,
infinite and huge offsets.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidcn import functional as F
from minidcn.backends import numba_cpu, reference
from minidcn.backends.numba_cpu import deform_conv as numba_deform_conv
from helpers import gradcheck_on

GRAD_NAMES = ("grad_x", "grad_offset", "grad_mask", "grad_weight", "grad_bias")


def deform_case(batch, channels, out_channels, size, kernel, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=1, offset_groups=1, mask=True, seed=0, integer_share=0.0):
    """Random float64 inputs of deform_conv2d and a gradient for its output.

    Offsets of a few pixels reach past the borders; a share ``integer_share`` of them is
    rounded to integers so that samples also sit exactly on pixels and on the border lines.
    """
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    out_size = tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1
                     for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))
    points = offset_groups * kh * kw
    offset = 1.5 * rng.standard_normal((batch, 2 * points) + out_size)
    offset = np.where(rng.uniform(size=offset.shape) < integer_share, np.round(offset), offset)
    return dict(
        x=rng.standard_normal((batch, channels) + size),
        offset=offset,
        mask=rng.uniform(0, 1, (batch, points) + out_size) if mask else None,
        weight=rng.standard_normal((out_channels, channels // groups) + kernel),
        bias=rng.standard_normal(out_channels),
        grad_y=rng.standard_normal((batch, out_channels) + out_size),
        params=(stride, padding, dilation, groups, offset_groups),
    )


def deform_kernels(ops, case, device=lambda a: a, host=lambda a: a):
    """[y, grad_x, grad_offset, grad_mask, grad_weight, grad_bias] from backend ``ops``."""
    arrays = {k: None if v is None else device(v) for k, v in case.items() if k != "params"}
    y = ops.deform_conv2d_forward(arrays["x"], arrays["offset"], arrays["mask"], arrays["weight"],
                                  arrays["bias"], *case["params"])
    grads = ops.deform_conv2d_backward(arrays["grad_y"], arrays["x"], arrays["offset"],
                                       arrays["mask"], arrays["weight"], *case["params"])
    return [None if a is None else host(a) for a in (y, *grads)]


def assert_agree(got, expected, names=("y",) + GRAD_NAMES, tol=1e-10):
    for name, a, b in zip(names, got, expected):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        scale = 1 + np.max(np.abs(b), initial=0)
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=name)


def on_cuda(a):
    from minidcn.device.array import CudaArray

    return CudaArray.from_host(a)


def to_host(a):
    return a.to_host()


# ---------------------------------------------------------------- agreement with the reference
@st.composite
def deform_cases(draw):
    """Geometries where offset groups and weight groups cut the channels differently."""
    groups, offset_groups = draw(st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 4), (4, 2), (3, 1)]))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 7))
                 for k, p, d in zip(kernel, padding, dilation))
    channels = 4 * groups * offset_groups // np.gcd(groups, offset_groups)
    return deform_case(draw(st.integers(1, 3)), channels, groups * draw(st.integers(1, 2)), size,
                       kernel, stride, padding, dilation, groups, offset_groups,
                       mask=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                       integer_share=draw(st.sampled_from([0.0, 0.5])))


@settings(max_examples=25)
@given(deform_cases())
def test_numba_deform_conv2d_matches_reference(case):
    assert_agree(deform_kernels(numba_cpu, case), deform_kernels(reference, case))


@pytest.mark.cuda
@pytest.mark.parametrize("case", [
    deform_case(1, 2, 2, (3, 4), (2, 2), padding=(1, 1), seed=1, integer_share=0.5),
    deform_case(2, 4, 2, (4, 3), (3, 2), stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=2,
                offset_groups=4, seed=2),
    deform_case(1, 4, 2, (3, 3), (2, 1), padding=(1, 0), groups=2, offset_groups=1, mask=False, seed=3),
], ids=["plain", "groups-stride-dilation", "no-mask"])
def test_cuda_deform_conv2d_matches_reference(case):
    from minidcn.backends import cuda

    assert_agree(deform_kernels(cuda, case, on_cuda, to_host), deform_kernels(reference, case))


def bilinear_case(seed=0, batch=2, channels=3, size=(4, 5), n_points=12):
    """Random points in and around the image, plus points exactly on pixels and border lines."""
    rng = np.random.default_rng(seed)
    h, w = size
    exact = np.array([[-1, 0], [0, -1], [-1, -1], [h - 1, w - 1], [h, 1], [1, w], [2, 3]], float)
    points = np.concatenate([rng.uniform(-2, max(h, w) + 1, (batch, n_points, 2)),
                             np.broadcast_to(exact, (batch,) + exact.shape)], axis=1)
    return (rng.standard_normal((batch, channels) + size), points,
            rng.standard_normal((batch, channels, points.shape[1])))


def bilinear_kernels(ops, x, points, grad_out, device=lambda a: a, host=lambda a: a):
    x, points, grad_out = device(x), device(points), device(grad_out)
    out = ops.bilinear_sample_forward(x, points)
    return [host(a) for a in (out, *ops.bilinear_sample_backward(grad_out, x, points))]


def test_numba_bilinear_sample_matches_reference():
    case = bilinear_case()
    assert_agree(bilinear_kernels(numba_cpu, *case), bilinear_kernels(reference, *case),
                 names=("out", "grad_x", "grad_points"))


@pytest.mark.cuda
def test_cuda_bilinear_sample_matches_reference():
    from minidcn.backends import cuda

    case = bilinear_case(seed=1, batch=1, channels=2, n_points=5)
    assert_agree(bilinear_kernels(cuda, *case, on_cuda, to_host), bilinear_kernels(reference, *case),
                 names=("out", "grad_x", "grad_points"))


def test_numba_float32_follows_the_float64_reference():
    """float32 takes its own path (weights cast to float32 before the channel loops)."""
    case = deform_case(2, 8, 4, (6, 7), (3, 3), padding=(1, 1), groups=2, offset_groups=2, seed=4)
    single = {k: v if k == "params" or v is None else v.astype(np.float32) for k, v in case.items()}
    got = deform_kernels(numba_cpu, single)
    assert all(a.dtype == np.float32 for a in got if a is not None)
    expected = deform_kernels(reference, case)
    assert_agree([a.astype(np.float64) for a in got], expected, tol=1e-5)


# ---------------------------------------------------------------- gradients through the public op
def away_from_integers(case):
    """The case with every offset's fractional part in [0.1, 0.9]: no sample near a kink."""
    rng = np.random.default_rng(99)
    offset = case["offset"]
    case["offset"] = np.floor(offset) + rng.uniform(0.1, 0.9, offset.shape)
    return case


def gradcheck_deform(backend_name, case, **options):
    stride, padding, dilation = case["params"][:3]

    def fn(x, offset, weight, mask, bias):
        return F.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask=mask)

    arrays = [case[k] for k in ("x", "offset", "weight", "mask", "bias")]
    return gradcheck_on(backend_name, fn, *arrays, names=["input", "offset", "weight", "mask", "bias"],
                        **options)


@pytest.mark.parametrize("groups, offset_groups", [(1, 2), (2, 1)])
def test_numba_gradcheck_when_offset_groups_and_groups_differ(groups, offset_groups):
    case = away_from_integers(deform_case(1, 4, 2, (4, 5), (2, 2), stride=(1, 2), padding=(1, 1),
                                          dilation=(2, 1), groups=groups, offset_groups=offset_groups,
                                          seed=5))
    assert gradcheck_deform("numba", case)


@pytest.mark.cuda
def test_cuda_gradcheck_when_offset_groups_span_weight_groups():
    case = away_from_integers(deform_case(1, 2, 2, (3, 3), (2, 2), padding=(1, 0), groups=2,
                                          offset_groups=1, seed=6))
    assert gradcheck_deform("cuda", case, max_entries=0, directions=2)


@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_gradcheck_bilinear_sample(backend_name):
    x, points, _ = bilinear_case(seed=13, batch=1, channels=2, n_points=6)
    points = np.floor(points[:, :6]) + np.random.default_rng(14).uniform(0.1, 0.9, (1, 6, 2))
    options = dict(max_entries=0, directions=2) if backend_name == "cuda" else {}
    assert gradcheck_on(backend_name, F.bilinear_sample, x, points, names=["x", "points"], **options)


# ---------------------------------------------------------------- determinism and chunking
DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from minidcn.backends import numba_cpu
    from minidcn.backends.numba_cpu import deform_conv
    sys.path.insert(0, sys.argv[1])
    from test_deform_backends import bilinear_case, bilinear_kernels, deform_case, deform_kernels

    deform_conv.set_column_budget(120_000)  # several chunks: 2, 2, 1 images (float32), 1 each (float64)
    digest = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        case = deform_case(5, 8, 8, (12, 11), (3, 3), padding=(1, 1), groups=2, offset_groups=2,
                           seed=7, integer_share=0.2)
        case = {k: v if k == "params" else v.astype(dtype) for k, v in case.items()}
        first, second = deform_kernels(numba_cpu, case), deform_kernels(numba_cpu, case)
        points = bilinear_case(seed=8, batch=3, channels=4, size=(9, 10), n_points=200)
        first += bilinear_kernels(numba_cpu, *(a.astype(dtype) for a in points))
        second += bilinear_kernels(numba_cpu, *(a.astype(dtype) for a in points))
        for a, b in zip(first, second):
            assert a.tobytes() == b.tobytes(), "two runs in one process differ"
            digest.update(a.tobytes())
    print(digest.hexdigest())
""")


def test_numba_results_are_bitwise_identical_for_one_or_two_threads_and_across_runs():
    tests_dir = Path(__file__).resolve().parent
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads,
                   PYTHONPATH=os.pathsep.join([str(tests_dir.parent), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(tests_dir)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        digests.append(done.stdout.split()[-1])
    assert digests[0] == digests[1], digests


def test_chunked_batches_give_the_numbers_of_one_chunk(monkeypatch):
    case = deform_case(3, 4, 4, (6, 5), (3, 3), padding=(1, 1), groups=2, offset_groups=2, seed=9)
    whole = deform_kernels(numba_cpu, case)
    calls = []
    im2row = numba_deform_conv._im2row

    def counting_im2row(xpad, *args):
        calls.append(xpad.shape[0])
        return im2row(xpad, *args)

    monkeypatch.setattr(numba_deform_conv, "_im2row", counting_im2row)
    previous = numba_deform_conv.set_column_budget(1)  # one image per chunk
    try:
        chunked = deform_kernels(numba_cpu, case)
    finally:
        numba_deform_conv.set_column_budget(previous)
    assert calls == [1, 1, 1] * 2  # forward, then backward, one image at a time
    # Equal to round-off, not bitwise: BLAS may block a GEMM differently for fewer rows.
    assert_agree(chunked, whole, tol=1e-14)


@pytest.mark.parametrize("nbytes", [0, -5, 2.5, True, "64MB"])
def test_set_column_budget_rejects_bad_values(nbytes):
    message = re.escape(f"set_column_budget: nbytes must be an int >= 1, got {nbytes!r}")
    with pytest.raises(ValueError, match=message):
        numba_deform_conv.set_column_budget(nbytes)


# ---------------------------------------------------------------- NaN, inf, huge, memory layout
BAD_OFFSETS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9]


def nonfinite_case():
    """A case whose first kernel point reads from NaN, ±inf and huge positions."""
    case = deform_case(1, 2, 2, (3, 4), (2, 2), padding=(1, 1), seed=10)
    offset = case["offset"]
    for i, bad in enumerate(BAD_OFFSETS):
        offset[0, i % 2, i % offset.shape[2], i % offset.shape[3]] = bad
    offset[0, 1, 0, 0] = np.nan  # the first point's dx too: both coordinates NaN
    return case


@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nonfinite_and_huge_offsets_give_finite_results(backend_name):
    case = nonfinite_case()
    if backend_name == "numba":
        got = deform_kernels(numba_cpu, case)
    else:
        from minidcn.backends import cuda

        got = deform_kernels(cuda, case, on_cuda, to_host)
    for name, a in zip(("y",) + GRAD_NAMES, got):
        assert np.all(np.isfinite(a)), name
    grad_offset, grad_mask = got[2], got[3]
    bad = ~np.isfinite(case["offset"]) | (np.abs(case["offset"]) > 1e9)
    assert bad.sum() == len(BAD_OFFSETS) + 1 and np.all(grad_offset[bad] == 0)
    assert grad_mask[0, 0, 0, 0] == 0  # that sampling point is outside: its value is 0
    finite = {k: v for k, v in case.items()}
    finite["offset"] = np.where(bad, 1e6, case["offset"])  # far away, like the bad ones
    assert_agree(got, deform_kernels(reference, finite))


def test_numba_kernels_accept_any_memory_layout():
    case = deform_case(2, 4, 4, (5, 6), (3, 2), padding=(1, 1), groups=2, offset_groups=2, seed=11)
    contiguous = deform_kernels(numba_cpu, case)

    def strided(a):
        out = np.zeros(tuple(2 * n for n in a.shape))[tuple(slice(None, None, 2) for _ in a.shape)]
        out[...] = a
        return out

    for relayout in (np.asfortranarray, strided):
        moved = {k: v if k == "params" or v is None else relayout(v) for k, v in case.items()}
        assert not moved["x"].flags.c_contiguous
        for name, a, b in zip(("y",) + GRAD_NAMES, deform_kernels(numba_cpu, moved), contiguous):
            np.testing.assert_array_equal(a, b, err_msg=name)
    x, points, grad_out = bilinear_case(seed=12)
    expected = bilinear_kernels(numba_cpu, x, points, grad_out)
    for a, b in zip(bilinear_kernels(numba_cpu, *(strided(a) for a in (x, points, grad_out))), expected):
        np.testing.assert_array_equal(a, b)

