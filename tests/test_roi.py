"""RoI pooling ops (roi_pool, roi_align, deform_roi_pool, deform_ps_roi_pool): gradients on
every backend, backend agreement, the properties that tie them together, exact conventions
checked against independent formulas, NaN handling and bad input."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidcn
from minidcn import Tensor
from minidcn import functional as F
from helpers import gradcheck_on, host, on, run, tensors

BACKENDS = ["reference", "numba", pytest.param("cuda", marks=pytest.mark.cuda)]


# ---------------------------------------------------------------------------- test data
def interior_rois(rng, k, batch, size, scale):
    """(k, 5) RoIs whose feature-map boxes lie in [1, H - 1.9] x [1, W - 1.9]: their samples
    stay inside the image, aligned or not (callers check where offsets move them)."""
    h, w = size
    x1 = rng.uniform(1.0, w / 2 - 0.3, k)
    y1 = rng.uniform(1.0, h / 2 - 0.3, k)
    x2 = rng.uniform(x1 + 0.6, w - 1.9)
    y2 = rng.uniform(y1 + 0.6, h - 1.9)
    return np.stack([rng.integers(0, batch, k), x1 / scale, y1 / scale, x2 / scale, y2 / scale], 1)


def sample_points(rois, offset, output_size, scale, ratio, gamma, aligned):
    """Every sample position (y, x) by the documented formula, written out loop by loop
    (independent of the kernels), as two flat arrays."""
    ph, pw = output_size
    ys, xs = [], []
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        shift = 0.5 if aligned else 0.0
        x_start, y_start = x1 * scale - shift, y1 * scale - shift
        w, h = (x2 * scale - shift) - x_start, (y2 * scale - shift) - y_start
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        gh = ratio if ratio > 0 else math.ceil(h / ph)
        gw = ratio if ratio > 0 else math.ceil(w / pw)
        for i in range(ph):
            for j in range(pw):
                y0 = y_start + gamma * h * offset[k, 1, i, j] + i * h / ph
                x0 = x_start + gamma * w * offset[k, 0, i, j] + j * w / pw
                ys += [y0 + (iy + 0.5) * h / ph / gh for iy in range(gh) for _ in range(gw)]
                xs += [x0 + (ix + 0.5) * w / pw / gw for _ in range(gh) for ix in range(gw)]
    return np.array(ys), np.array(xs)


def assert_smooth_everywhere(ys, xs, size):
    """Every sample inside [0, H-1) x [0, W-1) and away from integers: no kink within reach
    of a finite difference, and mmcv's offset gradient is the true derivative there."""
    h, w = size
    assert ys.min() > 0.01 and ys.max() < h - 1.01 and xs.min() > 0.01 and xs.max() < w - 1.01
    for v in (ys, xs):
        assert np.abs(v - np.round(v)).min() > 1e-4


def deform_case(seed=0, batch=2, channels=2, size=(7, 8), k=2, output_size=(2, 2), scale=0.5,
                ratio=2, gamma=0.1, ps=False):
    """x, rois, offset, mask for a deformable pooling whose samples all sit in the interior."""
    rng = np.random.default_rng(seed)
    cin = channels * output_size[0] * output_size[1] if ps else channels
    for _ in range(100):
        rois = interior_rois(rng, k, batch, size, scale)
        offset = rng.uniform(-1, 1, (k, 2) + output_size)
        ys, xs = sample_points(rois, offset, output_size, scale, ratio, gamma, True)
        try:
            assert_smooth_everywhere(ys, xs, size)
        except AssertionError:
            continue
        x = rng.standard_normal((batch, cin) + size)
        mask = rng.uniform(0.2, 1.0, (k, 1) + output_size)
        return x, rois, offset, mask
    raise AssertionError("no interior case found")


def wild_case(seed=0, batch=2, channels=2, size=(5, 6), k=4, output_size=(2, 2)):
    """RoIs and offsets that reach past every border (samples clamped, outside, in the band)."""
    rng = np.random.default_rng(seed)
    h, w = size
    x1, y1 = rng.uniform(-3, w, k), rng.uniform(-3, h, k)
    rois = np.stack([rng.integers(0, batch, k), x1, y1, x1 + rng.uniform(-1, 7, k),
                     y1 + rng.uniform(-1, 6, k)], 1)
    x = rng.standard_normal((batch, channels * output_size[0] * output_size[1]) + size)
    offset = rng.uniform(-3, 3, (k, 2) + output_size)
    mask = rng.uniform(0, 1, (k, 1) + output_size)
    return x, rois, offset, mask


# ---------------------------------------------------------------------------- gradients
def small(backend_name):
    """Fewer entries to difference on the compiled backends (the cuda simulator is slow)."""
    return {} if backend_name == "reference" else dict(batch=1, channels=1)


def check(backend_name, fn, *arrays):
    """gradcheck_on; on cuda, inputs over 16 entries are checked along 6 random directions."""
    kwargs = dict(max_entries=16, directions=6) if backend_name == "cuda" else {}
    gradcheck_on(backend_name, fn, *arrays, **kwargs)


@pytest.mark.parametrize("aligned, ratio", [(True, 2), (False, 0)])
def test_roi_align_gradcheck(backend_name, aligned, ratio):
    x, rois, _, _ = deform_case(seed=1, size=(5, 6), **small(backend_name))
    check(backend_name, lambda t: F.roi_align(t, rois, (2, 2), 0.5, ratio, aligned), x)


def test_roi_pool_gradcheck(backend_name):
    x, rois, _, _ = deform_case(seed=2, size=(5, 6), **small(backend_name))
    rois[:, 1:] = np.array([[0, 0, 9, 7], [2, 1, 11, 9]])  # bins of several pixels each
    check(backend_name, lambda t: F.roi_pool(t, rois, (2, 2), 0.5), x)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_roi_pool_gradcheck(backend_name, modulated):
    x, rois, offset, mask = deform_case(seed=3, size=(5, 6), ratio=2, **small(backend_name))
    if modulated:
        def fn(t, o, m):
            return F.deform_roi_pool(t, rois, o, (2, 2), 0.5, 2, 0.1, mask=m)
        check(backend_name, fn, x, offset, mask)
    else:
        check(backend_name, lambda t, o: F.deform_roi_pool(t, rois, o, (2, 2), 0.5, 2), x, offset)


def test_deform_ps_roi_pool_gradcheck(backend_name):
    x, rois, offset, _ = deform_case(seed=4, size=(5, 6), ps=True, **small(backend_name))
    check(backend_name, lambda t, o: F.deform_ps_roi_pool(t, rois, o, (2, 2), 0.5, 2), x, offset)


def test_deform_roi_pool_gradcheck_adaptive_grid():
    x, rois, offset, mask = deform_case(seed=5, size=(9, 10), scale=1.0, ratio=0)

    def fn(t, o, m):
        return F.deform_roi_pool(t, rois, o, (2, 2), 1.0, 0, 0.2, mask=m)
    gradcheck_on("reference", fn, x, offset, mask)


# ---------------------------------------------------------------------------- agreement
def _all_ops(rois, output_size):
    return {
        "roi_pool": lambda x, o, m: F.roi_pool(x, rois, output_size, 0.9),
        "roi_align": lambda x, o, m: F.roi_align(x, rois, output_size, 0.9, 2, True),
        "roi_align_legacy_adaptive": lambda x, o, m: F.roi_align(x, rois, output_size, 0.9, -1),
        "deform": lambda x, o, m: F.deform_roi_pool(x, rois, o, output_size, 0.9, 0, 0.3),
        "deform_modulated": lambda x, o, m: F.deform_roi_pool(x, rois, o, output_size, 0.9, 2,
                                                              0.3, mask=m),
        "deform_ps": lambda x, o, m: F.deform_ps_roi_pool(x, rois, o, output_size, 0.9, 0, 0.3),
    }


@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_backends_agree_with_reference(backend_name):
    x, rois, offset, mask = wild_case(seed=6, k=3 if backend_name == "cuda" else 8)
    for name, fn in _all_ops(rois, (2, 2)).items():
        want, want_grads = run("reference", fn, x, offset, mask)
        got, got_grads = run(backend_name, fn, x, offset, mask)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=name)
        for g, w in zip(got_grads, want_grads):
            if w is None:
                assert g is None, name
            else:
                np.testing.assert_allclose(g, w, rtol=0, atol=1e-10, err_msg=name)


def test_float32_close_to_float64():
    x, rois, offset, mask = wild_case(seed=7, k=6, output_size=(3, 2))
    for name, fn in _all_ops(rois, (3, 2)).items():
        for backend_name in ("reference", "numba"):
            with minidcn.backend(backend_name):
                t64 = [Tensor(a, dtype=np.float64) for a in (x, offset, mask)]
                t32 = [Tensor(a, dtype=np.float32) for a in (x, offset, mask)]
                y64, y32 = fn(*t64).numpy(), fn(*t32).numpy()
            assert y32.dtype == np.float32
            np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------- properties
@pytest.mark.parametrize("ratio", [1, 2, 0, -1])
def test_zero_offsets_are_roi_align_aligned(ratio):
    x, rois, _, _ = wild_case(seed=8, k=6, output_size=(3, 2))
    zeros = np.zeros((len(rois), 2, 3, 2))
    for backend_name in ("reference", "numba"):
        with minidcn.backend(backend_name):
            want = F.roi_align(Tensor(x), rois, (3, 2), 0.7, ratio, aligned=True).numpy()
            got = F.deform_roi_pool(Tensor(x), rois, zeros, (3, 2), 0.7, ratio, 0.1).numpy()
            no_offset = F.deform_roi_pool(Tensor(x), rois, None, (3, 2), 0.7, ratio).numpy()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(no_offset, want)


def test_position_sensitive_reads_its_channel_group():
    """ps[k, c, i, j] is deform_roi_pool's output channel (c ph + i) pw + j at bin (i, j)."""
    x, rois, offset, _ = wild_case(seed=9, channels=2, output_size=(2, 3))
    ps = F.deform_ps_roi_pool(Tensor(x), rois, offset, (2, 3), 0.8, 0, 0.2).numpy()
    plain = F.deform_roi_pool(Tensor(x), rois, offset, (2, 3), 0.8, 0, 0.2).numpy()
    for c in range(2):
        for i in range(2):
            for j in range(3):
                np.testing.assert_array_equal(ps[:, c, i, j], plain[:, (c * 2 + i) * 3 + j, i, j])


@pytest.mark.parametrize("aligned", [True, False])
def test_linear_image_pools_to_the_bin_centre(aligned):
    """Bilinear sampling is exact on a linear image, and the samples sit symmetrically in the
    bin, so every bin gives f(bin centre): checks the box, the shift and the grid."""
    size, scale = (9, 11), 0.5
    rng = np.random.default_rng(10)
    rois = interior_rois(rng, 5, 1, size, scale)
    a, b, c = 0.7, -1.3, 0.25
    gy, gx = np.mgrid[:size[0], :size[1]]
    image = (a * gy + b * gx + c)[None, None]
    got = F.roi_align(Tensor(image), rois, (3, 2), scale, 3, aligned).numpy()[:, 0]
    shift = 0.5 if aligned else 0.0
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        h, w = (y2 - y1) * scale, (x2 - x1) * scale
        if not aligned:
            h, w = max(h, 1), max(w, 1)
        centre_y = y1 * scale - shift + (np.arange(3)[:, None] + 0.5) * h / 3
        centre_x = x1 * scale - shift + (np.arange(2)[None, :] + 0.5) * w / 2
        np.testing.assert_allclose(got[k], a * centre_y + b * centre_x + c, atol=1e-12)


def test_offsets_move_bins_by_gamma_offset_roi_size():
    """On a linear image each bin gives f(bin centre + gamma * (dx w, dy h)): offset
    channel 0 moves x, channel 1 moves y, scaled by the RoI's width and height."""
    x, rois, offset, mask = deform_case(seed=11, batch=1, size=(9, 11), scale=0.5, gamma=0.2)
    a, b, c = 0.7, -1.3, 0.25
    gy, gx = np.mgrid[:9, :11]
    image = np.broadcast_to(a * gy + b * gx + c, (1, 2, 9, 11))
    for ps in (False, True):
        if ps:
            image = np.broadcast_to(image[:, :1], (1, 8, 9, 11))
            got = F.deform_ps_roi_pool(Tensor(image), rois, offset, (2, 2), 0.5, 2, 0.2).numpy()
        else:
            got = F.deform_roi_pool(Tensor(image), rois, offset, (2, 2), 0.5, 2, 0.2,
                                    mask=mask).numpy() / mask
        for k, (_, x1, y1, x2, y2) in enumerate(rois):
            h, w = (y2 - y1) * 0.5, (x2 - x1) * 0.5
            cy = y1 * 0.5 - 0.5 + (np.arange(2)[:, None] + 0.5) * h / 2 + 0.2 * offset[k, 1] * h
            cx = x1 * 0.5 - 0.5 + (np.arange(2)[None, :] + 0.5) * w / 2 + 0.2 * offset[k, 0] * w
            np.testing.assert_allclose(got[k, 0], a * cy + b * cx + c, atol=1e-12)


def test_uniform_offset_is_a_shifted_roi():
    """The same normalised offset in every bin equals roi_align of the RoI moved by
    gamma * (dx w, dy h): deform_roi_pool inherits roi_align's (torchvision's) numbers."""
    x, rois, _, _ = wild_case(seed=12, k=6, output_size=(3, 3))
    dx, dy, gamma, scale = 0.37, -0.61, 0.2, 0.8
    offset = np.empty((len(rois), 2, 3, 3))
    offset[:, 0], offset[:, 1] = dx, dy
    moved = rois.copy()
    w, h = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
    moved[:, [1, 3]] += (gamma * dx * w)[:, None]
    moved[:, [2, 4]] += (gamma * dy * h)[:, None]
    got = F.deform_roi_pool(Tensor(x), rois, offset, 3, scale, 2, gamma).numpy()
    want = F.roi_align(Tensor(x), moved, 3, scale, 2, aligned=True).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_constant_image_pools_to_the_constant():
    x, rois, offset, mask = deform_case(seed=13, size=(7, 8), scale=0.5, ps=True)
    image = np.full((2, 8, 7, 8), 2.5)
    outputs = [
        F.roi_pool(Tensor(image), rois, 2, 0.5),
        F.roi_align(Tensor(image), rois, 2, 0.5, 0, aligned=False),
        F.roi_align(Tensor(image), rois, 2, 0.5, 3, aligned=True),
        F.deform_roi_pool(Tensor(image), rois, offset, 2, 0.5, 2),
        F.deform_ps_roi_pool(Tensor(image), rois, offset, 2, 0.5, 2),
    ]
    for out in outputs:
        np.testing.assert_allclose(out.numpy(), 2.5, rtol=1e-14)
    modulated = F.deform_roi_pool(Tensor(image), rois, offset, 2, 0.5, 2, mask=mask).numpy()
    np.testing.assert_allclose(modulated, 2.5 * np.broadcast_to(mask, modulated.shape), rtol=1e-14)


@pytest.mark.parametrize("shift", [(1, 2), (3, 0)])
def test_shifting_image_and_roi_by_whole_pixels_changes_nothing(shift):
    x, rois, offset, mask = deform_case(seed=14, size=(7, 8), scale=1.0)
    dy, dx = shift
    canvas = np.random.default_rng(15).standard_normal((2, 2, 7 + dy + 2, 8 + dx + 2))
    canvas[:, :, dy:dy + 7, dx:dx + 8] = x
    moved = rois + np.array([0, dx, dy, dx, dy])
    ops = [
        lambda t, r: F.roi_pool(t, r, 2),
        lambda t, r: F.roi_align(t, r, 2, 1.0, 2, aligned=False),
        lambda t, r: F.roi_align(t, r, 2, 1.0, 0, aligned=True),
        lambda t, r: F.deform_roi_pool(t, r, offset, 2, 1.0, 2, mask=mask),
    ]
    for op in ops:
        np.testing.assert_allclose(op(Tensor(canvas), moved).numpy(), op(Tensor(x), rois).numpy(),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_adjoint_identity_in_the_input(backend_name):
    """Every op is linear in x (offsets fixed), so <op(x), g> = <x, op^T(g)>."""
    x, rois, offset, mask = wild_case(seed=16, k=2 if backend_name == "cuda" else 6)
    rng = np.random.default_rng(17)
    for name, fn in _all_ops(rois, (2, 2)).items():
        if name == "roi_pool":
            continue  # linear only for a fixed argmax: checked by its gradcheck
        with on(backend_name) as device:
            t, o, m = tensors(device, x, offset, mask)
            t.requires_grad_(True)
            y = fn(t, o, m)
            g = rng.standard_normal(y.shape)
            y.backward(Tensor(g).to(device))
            lhs, rhs = np.sum(host(y) * g), np.sum(x * host(t.grad))
        assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12), name


# ---------------------------------------------------------------------------- conventions
def test_roi_pool_rounds_halves_away_from_zero_and_takes_the_first_maximum():
    image = np.zeros((1, 1, 4, 6))
    image[0, 0, 1, 3] = image[0, 0, 2, 3] = 5.0  # a tie: the first (row-major) wins
    image[0, 0, 0, 2] = 9.0  # only inside when x1 = 2.5 rounds down (numpy's round)
    t = Tensor(image, requires_grad=True)
    y = F.roi_pool(t, [[0, 2.5, 0.5, 3.4, 2.5]], (1, 1))  # rounds to x 3..3, y 1..3
    assert y.numpy().item() == 5.0
    y.backward(np.ones((1, 1, 1, 1)))
    expected = np.zeros_like(image)
    expected[0, 0, 1, 3] = 1.0
    np.testing.assert_array_equal(t.grad.numpy(), expected)


def test_roi_pool_empty_bins_give_zero_and_no_gradient():
    image = np.full((1, 1, 3, 3), -4.0)
    t = Tensor(image, requires_grad=True)
    y = F.roi_pool(t, [[0, 5.0, 5.0, 9.0, 9.0], [0, -9.0, 1.0, -5.0, 2.0]], (2, 2))
    np.testing.assert_array_equal(y.numpy(), 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 0.0)


def test_roi_pool_bin_edges():
    """Bins cover rows [floor(i h / ph), ceil((i + 1) h / ph)): they overlap when h / ph is
    not whole.  A 3-row RoI in 2 bins: rows 0..1 and 1..2."""
    image = np.arange(12.0).reshape(1, 1, 4, 3)
    y = F.roi_pool(Tensor(image), [[0, 0, 0, 0, 2]], (2, 1)).numpy()
    np.testing.assert_array_equal(y[0, 0, :, 0], [3.0, 6.0])


def test_offset_gradient_uses_mmcv_border_formula():
    """mmcv's offset gradient weighs rows by (y1 - y), (y - y0) and columns by (x1 - x),
    (x - x0) with the unclamped sample: in the band y in (-1, 0) the row weights extrapolate
    (and the forward is flat in y there, yet dy gets the slope between rows 0 and 1); at
    y >= H - 1 the two rows coincide and the x-gradient is 0.  A 1 x 1 aligned RoI with
    one sample puts that sample at (y1, x1); gamma = 1 and roi size 1 leave the formula bare."""
    v = np.random.default_rng(18).standard_normal((1, 1, 4, 5))
    p = v[0, 0]
    y, x = -0.3, 1.7  # in the band: rows 0 and 1, columns 1 and 2
    band_dx = (1 - y) * (p[0, 2] - p[0, 1]) + (y - 0) * (p[1, 2] - p[1, 1])
    band_dy = (2 - x) * (p[1, 1] - p[0, 1]) + (x - 1) * (p[1, 2] - p[0, 2])
    y_last = 3.4  # past the last row centre: rows 3 and 3
    last_dy = (2 - x) * (p[3, 1] - p[3, 1]) + (x - 1) * (p[3, 2] - p[3, 2])  # = 0 too
    for backend_name in ("reference", "numba"):
        for sample_y, want in [(y, (band_dx, band_dy)), (y_last, (0.0, last_dy))]:
            with minidcn.backend(backend_name):
                offset = Tensor(np.zeros((1, 2, 1, 1)), requires_grad=True)
                rois = [[0, x, sample_y, x + 1, sample_y + 1]]
                F.deform_roi_pool(Tensor(v), rois, offset, 1, 1.0, 1, gamma=1.0).backward(
                    np.ones((1, 1, 1, 1)))
            np.testing.assert_allclose(offset.grad.numpy()[0, :, 0, 0], want, rtol=1e-12,
                                       atol=1e-14)


# ---------------------------------------------------------------------------- NaN
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the cuda simulator's NumPy
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_nan_and_infinite_rois_pool_to_zero_without_gradient(backend_name):
    x, rois, offset, mask = wild_case(seed=19, k=3)
    rois[0, 1] = np.nan
    rois[1, 4] = np.inf
    for name, fn in _all_ops(rois, (2, 2)).items():
        out, grads = run(backend_name, fn, x, offset, mask)
        assert np.isfinite(out).all(), name
        np.testing.assert_array_equal(out[0], 0.0, err_msg=name)
        if name != "roi_pool":  # roi_pool rounds an infinite coordinate to the clip value
            np.testing.assert_array_equal(out[1], 0.0, err_msg=name)
        for g in grads:
            assert g is None or np.isfinite(g).all(), name


def test_nan_offset_reads_zero_and_passes_no_gradient():
    x, rois, offset, mask = deform_case(seed=20)
    offset[0, 0, 1, 1] = np.nan
    out, (gx, go, gm) = run("numba", lambda t, o, m: F.deform_roi_pool(t, rois, o, 2, 0.5, 2,
                                                                        mask=m), x, offset, mask)
    assert np.isfinite(out).all() and np.isfinite(gx).all() and np.isfinite(go).all()
    np.testing.assert_array_equal(out[0, :, 1, 1], 0.0)
    assert go[0, :, 1, 1].tolist() == [0.0, 0.0] and gm[0, 0, 1, 1] == 0.0


# ---------------------------------------------------------------------------- bad input
X = np.zeros((2, 4, 5, 5))
ROIS = np.array([[0, 0, 0, 3, 3], [1, 1, 1, 4, 4]], dtype=float)
OFFSET = np.zeros((2, 2, 2, 2))


@pytest.mark.parametrize("call, error, text", [
    (lambda: F.roi_align(X, ROIS[:, :4], 2), ValueError, "rois must have shape (K, 5)"),
    (lambda: F.roi_pool(X, ROIS[0], 2), ValueError, "rois must have shape (K, 5)"),
    (lambda: F.roi_align(X, [[2, 0, 0, 1, 1]], 2), ValueError, "row 0 has 2.0"),
    (lambda: F.roi_pool(X, [[0, 0, 0, 1, 1], [-1, 0, 0, 1, 1]], 2), ValueError, "[0, 2)"),
    (lambda: F.deform_roi_pool(X, [[0.5, 0, 0, 1, 1]], None, 2), ValueError, "integer batch"),
    (lambda: F.roi_align(X, [[np.nan, 0, 0, 1, 1]], 2), ValueError, "has nan"),
    (lambda: F.roi_align(X, ROIS, 0), ValueError, "output_size must be >= 1"),
    (lambda: F.roi_pool(X, ROIS, (2, 0)), ValueError, "output_size must be >= 1"),
    (lambda: F.roi_align(X, ROIS, 2.5), TypeError, "output_size must be an int"),
    (lambda: F.deform_roi_pool(X, ROIS, OFFSET[:1], 2), ValueError,
     "offset must have shape (2, 2, 2, 2)"),
    (lambda: F.deform_roi_pool(X, ROIS, OFFSET, 3), ValueError,
     "offset must have shape (2, 2, 3, 3)"),
    (lambda: F.deform_roi_pool(X, ROIS, OFFSET, 2, mask=np.ones((2, 2, 2, 2))), ValueError,
     "mask must have shape (2, 1, 2, 2)"),
    (lambda: F.deform_ps_roi_pool(X, ROIS, OFFSET, 3), ValueError, "multiple of 3 * 3 = 9"),
    (lambda: F.roi_align(X[0], ROIS, 2), ValueError, "input must be 4-D"),
    (lambda: F.roi_align(np.zeros((1, 1, 0, 3)), [[0, 0, 0, 1, 1]], 2), ValueError, "H >= 1"),
    (lambda: F.roi_align(X, ROIS, 2, spatial_scale=0.0), ValueError, "spatial_scale must be > 0"),
    (lambda: F.roi_pool(X, ROIS, 2, spatial_scale=np.inf), ValueError,
     "spatial_scale must be finite"),
    (lambda: F.roi_align(X, ROIS, 2, sampling_ratio=1.5), TypeError,
     "sampling_ratio must be an int"),
    (lambda: F.roi_align(X, ROIS, 2, aligned=1), TypeError, "aligned must be a bool"),
    (lambda: F.deform_roi_pool(X, ROIS, OFFSET, 2, gamma=np.nan), ValueError,
     "gamma must be finite"),
    (lambda: F.roi_align(X, [[0, 0, 0, 1e5, 1e5]], 2, sampling_ratio=0), ValueError,
     "pass sampling_ratio > 0"),
    (lambda: F.deform_roi_pool(X, ROIS, None, 2, sampling_ratio=2000), ValueError,
     "takes 4000000 samples per bin"),
    (lambda: F.roi_align(Tensor(X, dtype=np.float64), Tensor(ROIS, dtype=np.float32), 2),
     TypeError, "rois float32"),
    (lambda: F.deform_roi_pool(Tensor(X, dtype=np.float64), ROIS,
                               Tensor(OFFSET, dtype=np.float32), 2), TypeError, "offset float32"),
    (lambda: F.roi_align(X, "rois", 2), TypeError, "rois must be a Tensor or array-like"),
    # sample counts computed as the kernels compute them: no overflow to inf or 0, no wrap
    (lambda: F.roi_align(X, [[0, -1.5e308, 0, 1.5e308, 4e302]], 1, spatial_scale=1e-302),
     ValueError, "rois row 0 [-1.5e+308, 0.0, 1.5e+308, 4e+302] times spatial_scale=1e-302 "
                 "would take a 4 x 3e+06 grid"),
    (lambda: F.deform_roi_pool(X, [[0, -4e9, -4e9, 4e9, 4e9]], None, 1), ValueError,
     "would take a 8e+09 x 8e+09 grid"),
    (lambda: F.deform_ps_roi_pool(X, [[1, 0, 0, 1, 1], [0, 0, 5, 4e6, 0]], None, 2, 1.0, 0),
     ValueError, "rois row 1"),  # 0 rows x 2e6 columns: no samples, but past the axis limit
    (lambda: F.roi_align(Tensor(X, dtype=np.float32), [[0, -3e38, 0, 3e38, 4]], 1), ValueError,
     "would take a 4 x 6e+38 grid"),  # numba's float64 count, though float32 makes it inf
    (lambda: F.roi_align(X, ROIS, (1, 2**62), sampling_ratio=2), ValueError, "output_size"),
])
def test_bad_input_is_refused_with_a_clear_message(call, error, text):
    with pytest.raises(error, match=None) as info:
        call()
    assert text in str(info.value)
    assert str(info.value).split(":")[0] in ("roi_align", "roi_pool", "deform_roi_pool",
                                            "deform_ps_roi_pool")


def test_any_sampling_ratio_at_most_zero_is_the_adaptive_grid():
    t = Tensor(X + np.arange(5.0))
    adaptive = F.roi_align(t, ROIS, 2, sampling_ratio=-1).numpy()
    for ratio in (0, -2**31 + 1):
        np.testing.assert_array_equal(F.roi_align(t, ROIS, 2, sampling_ratio=ratio).numpy(),
                                      adaptive)


def test_huge_roi_with_fixed_sampling_ratio_is_fine():
    out = F.roi_align(Tensor(X), [[0, -1e30, 0, 1e30, 3]], 2, sampling_ratio=2).numpy()
    assert np.isfinite(out).all()


@pytest.mark.cuda
def test_rois_on_another_device_are_refused():
    with pytest.raises(ValueError, match="one device"):
        F.roi_align(Tensor(X), Tensor(ROIS).to("cuda"), 2)


def test_empty_roi_list():
    t = Tensor(X, requires_grad=True)
    y = F.roi_align(t, np.zeros((0, 5)), 2)
    assert y.shape == (0, 4, 2, 2)
    y.backward(np.zeros((0, 4, 2, 2)))
    np.testing.assert_array_equal(t.grad.numpy(), 0.0)


# ---------------------------------------------------------------------------- no crash
# Run in a child interpreter: before the RoI ops kept their own rois, these ended in
# SIGSEGV or "double free or corruption" (numba), IndexError or NaN conversion errors
# (reference, cuda), or a gradient on the wrong image.  The child prints one line per run.
CHILD = """
import sys
import numpy as np
import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F

backend = sys.argv[1]
device = "cuda" if backend == "cuda" else "cpu"
minidcn.set_backend("numba" if backend == "cuda" else backend)
x0 = np.random.default_rng(0).random((2, 4, 6, 6))
ops = {
    "roi_align": lambda x, r: F.roi_align(x, r, 2, sampling_ratio=2),
    "roi_align adaptive": lambda x, r: F.roi_align(x, r, 2, sampling_ratio=0, aligned=True),
    "roi_pool": lambda x, r: F.roi_pool(x, r, 2),
    "deform_roi_pool": lambda x, r: F.deform_roi_pool(x, r, None, 2, sampling_ratio=2),
    "deform_ps_roi_pool": lambda x, r: F.deform_ps_roi_pool(x, r, None, 2, sampling_ratio=0),
    "nn.RoIAlign": lambda x, r: nn.RoIAlign(2, 1.0, 2)(x, r),
}
changes = {"batch -1e6": (1, 0, -1e6), "batch nan": (0, 0, np.nan), "batch 1": (0, 0, 1.0),
           "x2 1e308": (0, 3, 1e308), "y1 -inf": (1, 2, -np.inf)}


def grad(op, change, as_tensor):
    x = Tensor(x0).to(device).requires_grad_()
    rois = np.array([[0, 0, 0, 3, 3.0], [1, 1, 1, 4, 4.0]])
    if as_tensor:
        rois = Tensor(rois, dtype=np.float64).to(device)
    y = ops[op](x, rois)
    if change:
        row, col, value = changes[change]
        (rois.data if as_tensor else rois)[row, col] = value
    y.sum().backward()
    return x.grad.to("cpu").numpy()


for op in ops:
    unchanged = grad(op, None, False)
    for change in changes:
        for as_tensor in (False, True):
            same = np.array_equal(grad(op, change, as_tensor), unchanged)
            print(op, change, "tensor" if as_tensor else "array", "same" if same else "DIFFERENT")
x = Tensor(x0).to(device)
for rois, scale in [([[0, -1.5e308, 0, 1.5e308, 4e302]], 1e-302),
                    ([[0, -1e300, -1e300, 1e300, 1e300]], 1e-290),
                    ([[0, -4e9, -4e9, 4e9, 4e9]], 1.0)]:
    for op in ("roi_align", "deform_roi_pool", "deform_ps_roi_pool"):
        try:
            getattr(F, op)(x, rois, *([None] if op != "roi_align" else []), 1,
                           spatial_scale=scale, sampling_ratio=0)
            print(op, "limit ran")
        except ValueError as err:
            print(op, "limit", "same" if str(err).startswith(op + ": rois row 0") else err)
"""


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_changed_or_absurd_rois_cannot_crash_or_move_the_gradient(backend_name):
    """The issue's reproductions: rois changed after forward (batch index -1e6, NaN, another
    image; coordinates 1e308, -inf), as arrays and as Tensors, on every RoI op; then RoIs
    whose adaptive sample count overflowed float64 or wrapped int64.  The child must exit
    normally (not by a signal), every gradient must equal the unchanged run, and every
    absurd RoI must be refused with a ValueError naming rois."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    child = subprocess.run([sys.executable, "-c", CHILD, backend_name], capture_output=True,
                           text=True, timeout=900, env=env, cwd=root)
    assert child.returncode == 0, (child.returncode, child.stderr[-3000:])
    lines = child.stdout.splitlines()
    assert len(lines) == 6 * 5 * 2 + 3 * 3, child.stdout
    assert [line for line in lines if not line.endswith(" same")] == []
