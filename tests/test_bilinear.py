"""Bilinear sampling: G(q, p), its borders, its gradients, and bad input, on every backend."""

import warnings

import numpy as np
import pytest

import minidcn
from minidcn import Tensor
from minidcn import functional as F
from helpers import gradcheck_on, host, on, run, tensors

H, W = 4, 5


def away_from_integers(rng, shape, low, high):
    """Coordinates in [low, high) whose fractional part lies in [0.1, 0.9]: no kink within reach."""
    return rng.integers(low, high, size=shape) + rng.uniform(0.1, 0.9, size=shape)


def dense_sample(x, points):
    """Σ_q G(q, p) x(q) over every pixel q of the image: the definition, with no shortcut."""
    qy, qx = np.meshgrid(np.arange(x.shape[2]), np.arange(x.shape[3]), indexing="ij")
    pixels = np.stack([qy, qx], axis=-1).reshape(-1, 2)  # (H*W, 2)
    weights = F.bilinear_kernel(pixels[None, None], points[:, :, None, :])  # (B, P, H*W)
    return np.einsum("bpq,bcq->bcp", weights, x.reshape(x.shape[0], x.shape[1], -1))


def sample(x, points):
    return F.bilinear_sample(x, points)


def sample_and_grads(backend_name, x, points, grad_out):
    """(out, grad_x, grad_points) as host arrays, the backward seeded with ``grad_out``."""
    with on(backend_name) as device:
        tx, tp = tensors(device, x, points, requires_grad=True)
        out = sample(tx, tp)
        out.backward(Tensor(grad_out, dtype=np.float64).to(device))
        return host(out), host(tx.grad), host(tp.grad)


# ---------------------------------------------------------------- the weight G itself
def test_kernel_is_the_product_of_two_tents():
    q = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [0, -1]])
    p = np.array([0.25, 0.5])
    expected = [0.75 * 0.5, 0.75 * 0.5, 0.25 * 0.5, 0.25 * 0.5, 0.0, 0.0]
    np.testing.assert_allclose(F.bilinear_kernel(q, p), expected, rtol=0, atol=1e-15)


def test_kernel_broadcasts_and_sums_to_one_over_the_four_neighbours():
    rng = np.random.default_rng(0)
    p = rng.uniform(-3, 3, size=(7, 2))
    corners = np.floor(p)[:, None, :] + np.array([[0, 0], [0, 1], [1, 0], [1, 1]])  # (7, 4, 2)
    g = F.bilinear_kernel(corners, p[:, None, :])
    assert g.shape == (7, 4)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert F.bilinear_kernel(np.zeros((3, 1, 2)), np.zeros((1, 5, 2))).shape == (3, 5)


def test_kernel_rejects_bad_coordinates():
    with pytest.raises(ValueError, match="bilinear_kernel: q must have a last axis of size 2"):
        F.bilinear_kernel(np.zeros((4, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="do not broadcast"):
        F.bilinear_kernel(np.zeros((4, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="bilinear_kernel: p"):
        F.bilinear_kernel(np.zeros(2), ["a", "b"])


# ---------------------------------------------------------------- forward
def test_sample_is_the_sum_of_G_times_x(backend_name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, H, W))
    border = [[-1, 0], [0, -1], [-0.5, 2], [H - 1, W - 1], [H - 0.5, 1], [H, 2], [1, W],
              [2, 3], [-1.5, 1], [1.25, -0.75]]
    points = np.concatenate([rng.uniform(-2, max(H, W) + 1, (2, 12, 2)),
                             np.broadcast_to(border, (2, len(border), 2))], axis=1)
    with on(backend_name) as device:
        out = host(sample(*tensors(device, x, points)))
    np.testing.assert_allclose(out, dense_sample(x, points), rtol=0, atol=1e-13)


def test_float32_stays_float32(backend_name):
    rng = np.random.default_rng(2)
    x, points = rng.standard_normal((1, 2, H, W)), rng.uniform(-1, 4, (1, 6, 2))
    with on(backend_name) as device:
        out = sample(*[Tensor(a, dtype=np.float32).to(device) for a in (x, points)])
    assert out.dtype == np.float32 and out.shape == (1, 2, 6)
    np.testing.assert_allclose(host(out), dense_sample(x, points), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients
def test_gradcheck_x_and_points(backend_name):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, H, W))
    points = away_from_integers(rng, (2, 6, 2), -2, max(H, W) + 1)
    # Entry by entry on the host; along random directions in the (slow) cuda simulator.
    options = dict(max_entries=0, directions=3) if backend_name == "cuda" else {}
    assert gradcheck_on(backend_name, sample, x, points, **options)


def test_position_gradient_at_integer_coordinates_is_one_sided_toward_plus_one(backend_name):
    """At an integer (y, x) the floor-based formula gives dv/dy = v[y+1, x] - v[y, x]."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 1, H, W))
    v = np.pad(x[0, 0], 1)  # v[y + 1, x + 1] = x(y, x), zero in the one-pixel border
    points = np.array([[[1, 2], [0, 0], [H - 1, W - 1], [-1, 2], [2, -1], [-1, -1], [H, 2]]], float)
    expected = []
    for y, xx in points[0].astype(int):
        if -1 <= y < H and -1 <= xx < W:
            at = v[y + 1, xx + 1]
            expected.append([v[y + 2, xx + 1] - at, v[y + 1, xx + 2] - at])
        else:
            expected.append([0.0, 0.0])
    _, _, grad_points = sample_and_grads(backend_name, x, points, np.ones((1, 1, points.shape[1])))
    got = grad_points[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)
    # A central difference averages both sides and disagrees here: this convention matters.
    assert not np.allclose(got[0], [(v[3, 3] - v[1, 3]) / 2, (v[2, 4] - v[2, 2]) / 2])


def test_adjoint_identity_in_x(backend_name):
    """<S x, u> = <x, Sᵀ u>: sampling is linear in x and backward is its transpose."""
    rng = np.random.default_rng(5)
    x, points = rng.standard_normal((2, 3, H, W)), rng.uniform(-2, 6, (2, 9, 2))
    u = rng.standard_normal((2, 3, 9))
    out, grad_x, _ = sample_and_grads(backend_name, x, points, u)
    lhs, rhs = np.sum(out * u), np.sum(x * grad_x)
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs))


# ---------------------------------------------------------------- NaN, inf, huge
def test_nonfinite_and_huge_points_give_zero_and_zero_gradient(backend_name):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, H, W))
    bad = [[np.nan, 1.5], [1.5, np.nan], [np.inf, 1.0], [-np.inf, 1.0], [1.0, np.inf],
           [1e30, 1.0], [-1e30, 2.0], [1.0, 1e300], [3e9, -3e9], [np.nan, np.inf]]
    good = away_from_integers(rng, (4, 2), -1, 4)
    points = np.concatenate([good, bad])[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from casts or NaN arithmetic
        out, grad_x, grad_points = sample_and_grads(backend_name, x, points, np.ones((1, 2, 14)))
    out_good, grad_x_good, grad_points_good = sample_and_grads(backend_name, x, good[None],
                                                               np.ones((1, 2, 4)))
    assert np.all(out[:, :, 4:] == 0) and np.all(grad_points[:, 4:] == 0)
    np.testing.assert_allclose(out[:, :, :4], out_good, rtol=0, atol=1e-14)
    np.testing.assert_allclose(grad_points[:, :4], grad_points_good, rtol=0, atol=1e-14)
    np.testing.assert_allclose(grad_x, grad_x_good, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- memory layout
def test_fortran_and_strided_inputs_give_identical_results(backend_name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, H, W))
    points = rng.uniform(-2, 6, (2, 5, 2))
    reference = run(backend_name, sample, x, points)
    x_strided = np.zeros((2, 6, H, 2 * W))[:, ::2, :, ::2]
    x_strided[...] = x
    points_strided = np.zeros((2, 10, 4))[:, ::2, ::2]
    points_strided[...] = points
    for xs, ps in ((np.asfortranarray(x), np.asfortranarray(points)), (x_strided, points_strided)):
        assert not (xs.flags.c_contiguous or ps.flags.c_contiguous)
        out, grads = run(backend_name, sample, xs, ps)
        np.testing.assert_array_equal(out, reference[0])
        for g, g_ref in zip(grads, reference[1]):
            np.testing.assert_array_equal(g, g_ref)


# ---------------------------------------------------------------- bad input
GOOD_X, GOOD_POINTS = np.zeros((2, 3, H, W)), np.zeros((2, 5, 2))


@pytest.mark.parametrize("x, points, error, message", [
    (np.zeros((3, H, W)), GOOD_POINTS, ValueError, "bilinear_sample: x must be 4-D"),
    (GOOD_X, np.zeros((2, 5)), ValueError, "bilinear_sample: points must be 3-D"),
    (GOOD_X, np.zeros((2, 5, 3)), ValueError,
     r"points must have shape \(B, P, 2\).*got \(2, 5, 3\)"),
    (GOOD_X, np.zeros((3, 5, 2)), ValueError, "points has batch size 3, expected x's batch size 2"),
    (np.zeros((2, 3, 0, W)), GOOD_POINTS, ValueError, "x may have an empty batch .axis 0. but no other"),
    (GOOD_X, np.zeros((2, 0, 2)), ValueError, "points may have an empty batch .axis 0. but no other"),
    (GOOD_X, np.zeros((2, 5, 2), np.float32), TypeError,
     "one dtype, got x float64, points float32"),
    (np.full((2, 3, H, W), "a"), GOOD_POINTS, TypeError, "bilinear_sample: x"),
    (GOOD_X, {"y": 1}, TypeError, "bilinear_sample: points must be a Tensor or array-like"),
])
def test_bad_input_is_rejected_before_any_kernel_runs(monkeypatch, x, points, error, message):
    def no_kernels(device):
        raise AssertionError("a kernel was looked up before validation finished")

    monkeypatch.setattr(minidcn.functional.bilinear, "kernels", no_kernels)
    with pytest.raises(error, match=message):
        F.bilinear_sample(x, points)


@pytest.mark.cuda
def test_tensors_on_two_devices_are_rejected():
    x = Tensor(GOOD_X)
    with pytest.raises(ValueError, match="bilinear_sample: all tensors must be on one device"):
        F.bilinear_sample(x, Tensor(GOOD_POINTS).to("cuda"))
