"""multi_scale_deform_attn: the formula, its gradients, the three backends, bad input, torch.

* float64 gradcheck of value, sampling_locations and attention_weights on every backend
  (locations whose pixel coordinates stay away from integers, where the position gradient
  is one-sided);
* the numba and cuda kernels agree with the reference to 1e-10 in float64 (forward and every
  gradient), with locations across the borders, and numba is bitwise the same for 1 and 2
  threads;
* properties: one level and one point is ``bilinear_sample`` at (v H - 0.5, u W - 0.5) times
  the weight (and many levels and points are the sum of those); the op is linear in value
  and its value gradient is the adjoint; the pixel-centre and edge conventions;
  NaN, infinite and huge locations read 0 and get gradient 0;
* every argument's refusals, before any kernel runs (the empty batch is in
  test_empty_batches.py);
* a cross-check against a pure-torch implementation with ``grid_sample`` (skipped without torch).
"""

import importlib

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidcn
from minidcn import Tensor
from minidcn import functional as F
from minidcn.backends import numba_cpu, reference
from helpers import gradcheck_on, host, on, tensors

msda = F.multi_scale_deform_attn
# The module of the same name (the package exports the function under the module's name).
functional_module = importlib.import_module("minidcn.functional.multi_scale_deform_attn")

# (H_l, W_l) of each level: small, with a 1-pixel level and a non-square one.
SHAPES = [(3, 4), (2, 2), (1, 3)]
# The cuda simulator runs every thread in Python: it gets the smallest case and a gradcheck
# along random directions.
CUDA_GRADCHECK = dict(max_entries=0, directions=6)


def away_from_integers(rng, size, shape):
    """Pixel coordinates in [-2, size + 1) whose fractional part lies in [0.1, 0.9]: no kink
    within reach of the finite differences; some lie in the zero band, some fully outside."""
    return rng.integers(-2, size + 1, size=shape) + rng.uniform(0.1, 0.9, size=shape)


def case(seed, batch=2, queries=3, heads=2, channels=3, points=2, shapes=SHAPES, kinks=False):
    """(value, spatial_shapes, sampling_locations, attention_weights, grad_out) in float64.

    With ``kinks=False`` the locations are drawn in pixel coordinates away from integers and
    normalised, (u, v) = ((x + 0.5) / W, (y + 0.5) / H); with ``kinks=True`` they are drawn
    uniformly over [-0.3, 1.3], and a quarter of them sit exactly on pixel centres and borders.
    """
    rng = np.random.default_rng(seed)
    shapes = np.array(shapes, dtype=np.int64)
    levels, rows = len(shapes), int((shapes[:, 0] * shapes[:, 1]).sum())
    value = rng.standard_normal((batch, rows, heads, channels))
    locations = np.empty((batch, queries, heads, levels, points, 2))
    for level, (height, width) in enumerate(shapes):
        where = locations[:, :, :, level]
        if kinks:
            where[...] = rng.uniform(-0.3, 1.3, size=where.shape)
            on_pixels = rng.uniform(size=where.shape[:-1]) < 0.25
            pixel = rng.integers(-1, max(height, width) + 1, size=where.shape)
            where[on_pixels] = ((pixel + 0.5) / [width, height])[on_pixels]
        else:
            where[..., 0] = (away_from_integers(rng, width, where.shape[:-1]) + 0.5) / width
            where[..., 1] = (away_from_integers(rng, height, where.shape[:-1]) + 0.5) / height
    weights = rng.uniform(-1, 1, size=(batch, queries, heads, levels, points))
    grad_out = rng.standard_normal((batch, queries, heads * channels))
    return value, shapes, locations, weights, grad_out


def forward_and_grads(backend_name, value, shapes, locations, weights, grad_out, dtype=np.float64):
    """(out, grad_value, grad_locations, grad_weights) as float64 host arrays."""
    with on(backend_name) as device:
        ts = [Tensor(a, dtype=dtype, requires_grad=True).to(device).detach().requires_grad_()
              for a in (value, locations, weights)]
        out = msda(ts[0], shapes, ts[1], ts[2])
        out.backward(Tensor(grad_out, dtype=dtype).to(device))
        return [host(out)] + [host(t.grad) for t in ts]


def level_image(value, shapes, level, m):
    """Level ``level`` of head m as a (N, D, H, W) image (the layout bilinear_sample takes)."""
    areas = [int(h * w) for h, w in shapes]
    start, (height, width) = sum(areas[:level]), shapes[level]
    rows = value[:, start:start + areas[level], m, :]  # (N, H W, D)
    return rows.transpose(0, 2, 1).reshape(value.shape[0], -1, height, width)


# ---------------------------------------------------------------- gradients
def test_gradcheck_every_input(backend_name):
    cuda = backend_name == "cuda"
    value, shapes, locations, weights, _ = (
        case(1, batch=1, queries=2, heads=2, channels=2, points=2, shapes=SHAPES[:2]) if cuda
        else case(1))
    assert gradcheck_on(backend_name, lambda v, loc, a: msda(v, shapes, loc, a), value,
                        locations, weights,
                        names=["value", "sampling_locations", "attention_weights"],
                        **(CUDA_GRADCHECK if cuda else {}))


def test_location_gradient_on_a_pixel_is_one_sided_toward_plus_one(backend_name):
    """A point exactly on pixel centre (y, x) = (1, 2): d out / d u = W (v[1, 3] - v[1, 2]),
    the forward difference, and likewise d / d v = H (v[2, 2] - v[1, 2])."""
    height, width = 3, 4
    value = np.arange(12.0).reshape(1, 12, 1, 1) ** 2  # v[y, x] = (4 y + x)^2: not linear
    locations = np.array([(2 + 0.5) / width, (1 + 0.5) / height]).reshape(1, 1, 1, 1, 1, 2)
    out, _, grad_locations, grad_weights = forward_and_grads(
        backend_name, value, [[height, width]], locations, np.full((1, 1, 1, 1, 1), 2.0),
        np.ones((1, 1, 1)))
    assert out.ravel().tolist() == [2 * 6.0**2]
    assert grad_weights.ravel().tolist() == [6.0**2]
    np.testing.assert_allclose(grad_locations.ravel(),
                               [2 * width * (7.0**2 - 6.0**2), 2 * height * (10.0**2 - 6.0**2)],
                               rtol=1e-14)


# ---------------------------------------------------------------- the backends agree
@pytest.mark.parametrize("backend_name", ["numba", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("kinks", [False, True], ids=["generic", "on-pixels"])
def test_fast_backends_agree_with_the_reference(backend_name, kinks):
    cuda = backend_name == "cuda"
    inputs = case(2, kinks=kinks, **(dict(batch=1, queries=2, heads=2, channels=3) if cuda else {}))
    expected = forward_and_grads("reference", *inputs)
    got = forward_and_grads(backend_name, *inputs)
    for name, e, g in zip(["out", "grad_value", "grad_locations", "grad_weights"], expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-10, err_msg=name)


@given(heads=st.integers(1, 3), channels=st.integers(1, 5), points=st.integers(1, 3),
       queries=st.integers(1, 4), levels=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)),
                                                  min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_numba_agrees_with_the_reference_over_shapes(heads, channels, points, queries, levels,
                                                     seed):
    value, shapes, locations, weights, grad_out = case(
        seed, batch=2, queries=queries, heads=heads, channels=channels, points=points,
        shapes=levels, kinks=True)
    args = (value, shapes, locations, weights)
    np.testing.assert_allclose(numba_cpu.multi_scale_deform_attn_forward(*args),
                               reference.multi_scale_deform_attn_forward(*args), rtol=0, atol=1e-10)
    for g, e in zip(numba_cpu.multi_scale_deform_attn_backward(grad_out, *args),
                    reference.multi_scale_deform_attn_backward(grad_out, *args)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-10)


def test_float32_runs_in_float32_close_to_float64(backend_name):
    small = dict(batch=1, queries=2, heads=2, channels=3) if backend_name == "cuda" else {}
    inputs = case(3, **small)
    expected = forward_and_grads("reference", *inputs)
    with on(backend_name) as device:
        ts = [Tensor(a, dtype=np.float32, requires_grad=True).to(device).detach().requires_grad_()
              for a in (inputs[0], inputs[2], inputs[3])]
        out = msda(ts[0], inputs[1], ts[1], ts[2])
        out.backward(Tensor(inputs[4], dtype=np.float32).to(device))
        got = [out] + [t.grad for t in ts]
    for e, g in zip(expected, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(host(g), e, rtol=1e-4, atol=1e-4)


def test_numba_is_bitwise_the_same_for_any_thread_count():
    value, shapes, locations, weights, grad_out = case(4, batch=2, queries=5, heads=3, points=3,
                                                       kinks=True)
    args = (value.astype(np.float32), shapes, locations.astype(np.float32),
            weights.astype(np.float32))
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append([numba_cpu.multi_scale_deform_attn_forward(*args),
                            *numba_cpu.multi_scale_deform_attn_backward(grad_out, *args)])
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_numba_kernels_accept_non_contiguous_arrays():
    value, shapes, locations, weights, grad_out = case(5)
    args = (value, shapes, locations, weights)
    strided = (np.asfortranarray(value), shapes[:, ::-1][:, ::-1], np.asfortranarray(locations),
               np.repeat(weights, 2, axis=-1)[..., ::2])
    np.testing.assert_array_equal(numba_cpu.multi_scale_deform_attn_forward(*strided),
                                  numba_cpu.multi_scale_deform_attn_forward(*args))
    fortran_grad = np.asfortranarray(grad_out)
    for a, b in zip(numba_cpu.multi_scale_deform_attn_backward(fortran_grad, *strided),
                    numba_cpu.multi_scale_deform_attn_backward(grad_out, *args)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- properties
def test_one_level_one_point_is_bilinear_sample_times_the_weight(backend_name):
    value, shapes, locations, weights, _ = case(6, shapes=[(3, 4)], points=1, kinks=True)
    height, width = shapes[0]
    with on(backend_name) as device:
        v, loc, a = tensors(device, value, locations, weights)
        out = host(msda(v, shapes, loc, a))
        for m in range(value.shape[2]):
            u, w = locations[:, :, m, 0, 0, 0], locations[:, :, m, 0, 0, 1]  # (N, Q)
            pixels = np.stack([w * height - 0.5, u * width - 0.5], axis=-1)  # (y, x)
            image, points = tensors(device, level_image(value, shapes, 0, m), pixels)
            sampled = host(F.bilinear_sample(image, points))  # (N, D, Q)
            expected = weights[:, :, m, 0, 0][:, :, None] * sampled.transpose(0, 2, 1)
            np.testing.assert_allclose(out[:, :, m * value.shape[3]:(m + 1) * value.shape[3]],
                                       expected, rtol=0, atol=1e-13)


def test_levels_and_points_add_up(backend_name):
    """Many levels and points: the sum over (l, p) of one-level, one-point calls."""
    small = dict(batch=1, queries=2, heads=1, channels=2) if backend_name == "cuda" else {}
    value, shapes, locations, weights, _ = case(7, kinks=True, **small)
    areas = [int(h * w) for h, w in shapes]
    with on(backend_name) as device:
        total = host(msda(*tensors(device, value), shapes, *tensors(device, locations, weights)))
        parts = 0.0
        for level in range(len(shapes)):
            start = sum(areas[:level])
            for p in range(locations.shape[4]):
                parts = parts + host(msda(
                    *tensors(device, value[:, start:start + areas[level]]), shapes[level:level + 1],
                    *tensors(device, locations[:, :, :, level:level + 1, p:p + 1],
                             weights[:, :, :, level:level + 1, p:p + 1])))
    np.testing.assert_allclose(total, parts, rtol=0, atol=1e-13)


def test_linear_in_value_and_the_value_gradient_is_its_adjoint(backend_name):
    """out(a v1 + b v2) = a out(v1) + b out(v2), and <g, out(v)> = <grad_value(g), v>."""
    small = dict(batch=1, queries=2, heads=2, channels=2) if backend_name == "cuda" else {}
    v1, shapes, locations, weights, g = case(8, kinks=True, **small)
    v2 = np.random.default_rng(9).standard_normal(v1.shape)
    out1, grad_value, _, _ = forward_and_grads(backend_name, v1, shapes, locations, weights, g)
    out2 = forward_and_grads(backend_name, v2, shapes, locations, weights, g)[0]
    mixed = forward_and_grads(backend_name, 2.0 * v1 - 3.0 * v2, shapes, locations, weights, g)[0]
    np.testing.assert_allclose(mixed, 2.0 * out1 - 3.0 * out2, rtol=0, atol=1e-12)
    assert abs(np.sum(g * out2) - np.sum(grad_value * v2)) <= 1e-12 * np.sum(np.abs(g * out2))
    assert np.any(grad_value != 0)


def test_location_reads_the_pixel_grid_of_grid_sample(backend_name):
    """(u, v) = ((x + 0.5) / W, (y + 0.5) / H) is pixel centre (y, x); u = 0 is the left edge,
    half-way between column 0 and the zero padding; u = 1 the right edge."""
    height, width = 2, 4
    value = (1.0 + np.arange(8.0)).reshape(1, 8, 1, 1)  # v[y, x] = 1 + 4 y + x
    uv = [((1 + 0.5) / width, (1 + 0.5) / height),  # centre of (1, 1): 6
          (0.0, (0 + 0.5) / height),  # left edge of row 0: 1 / 2
          (1.0, (1 + 0.5) / height),  # right edge of row 1: 8 / 2
          ((2 + 0.5) / width, 0.0),  # top edge of column 2: 3 / 2
          ((0.25 + 0.5) / width, (0.5 + 0.5) / height)]  # (0.5, 0.25): the four weights
    locations = np.array(uv).reshape(1, len(uv), 1, 1, 1, 2)
    expected = [6.0, 0.5, 4.0, 1.5, 0.5 * (0.75 * 1 + 0.25 * 2) + 0.5 * (0.75 * 5 + 0.25 * 6)]
    with on(backend_name) as device:
        out = host(msda(*tensors(device, value), [[height, width]],
                        *tensors(device, locations, np.ones((1, len(uv), 1, 1, 1)))))
    np.testing.assert_allclose(out.ravel(), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300, -1e300, 3.0, -2.0])
def test_nan_infinite_huge_and_far_locations_read_zero_with_zero_gradient(backend_name, bad):
    """Some points get ``bad`` in u or v: they add nothing and receive gradient 0, and every
    other number is the same as with those points' weights set to 0."""
    small = dict(batch=1, queries=2, heads=2, channels=2) if backend_name == "cuda" else {}
    value, shapes, locations, weights, g = case(10, kinks=True, **small)
    hit = np.random.default_rng(11).uniform(size=weights.shape) < 0.4
    hit.flat[0] = True
    broken, silenced = locations.copy(), weights.copy()
    broken[..., 0][hit] = bad
    broken[..., 1][hit & (np.arange(hit.size).reshape(hit.shape) % 2 == 0)] = bad
    silenced[hit] = 0.0
    out, grad_value, grad_locations, grad_weights = forward_and_grads(
        backend_name, value, shapes, broken, weights, g)
    clean = forward_and_grads(backend_name, value, shapes, locations, silenced, g)
    np.testing.assert_array_equal(grad_locations[hit], 0.0)
    np.testing.assert_array_equal(grad_weights[hit], 0.0)
    np.testing.assert_allclose(out, clean[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(grad_value, clean[1], rtol=0, atol=1e-13)
    np.testing.assert_allclose(grad_locations[~hit], clean[2][~hit], rtol=0, atol=1e-13)
    np.testing.assert_allclose(grad_weights[~hit], clean[3][~hit], rtol=0, atol=1e-13)
    assert all(np.isfinite(a).all() for a in (out, grad_value, grad_locations, grad_weights))


def test_spatial_shapes_may_be_a_list_or_any_integer_array_and_the_op_keeps_a_copy():
    value, shapes, locations, weights, g = case(13)
    expected = forward_and_grads("numba", value, shapes, locations, weights, g)
    givens = [shapes.tolist(), tuple(map(tuple, shapes.tolist())), shapes.astype(np.int32),
              shapes.astype(np.uint8), np.array(shapes.tolist(), dtype=object)]
    try:
        import torch
        givens.append(torch.tensor(shapes))  # a torch long tensor reads as an int64 array
    except ImportError:
        pass
    for shapes_as_given in givens:
        got = forward_and_grads("numba", value, shapes_as_given, locations, weights, g)
        for e, r in zip(expected, got):
            np.testing.assert_array_equal(r, e)
    mine = shapes.copy()
    v, loc, a = tensors("cpu", value, locations, weights, requires_grad=True)
    out = msda(v, mine, loc, a)
    mine[:] = [[1, 19], [0, 0], [0, 0]]  # the caller reuses its array after forward
    out.backward(Tensor(g))
    for e, r in zip(expected[1:], (v.grad, loc.grad, a.grad)):
        np.testing.assert_array_equal(host(r), e)


# ---------------------------------------------------------------- bad input
def good_arguments():
    value, shapes, locations, weights, _ = case(14)
    return dict(value=value, spatial_shapes=shapes, sampling_locations=locations,
                attention_weights=weights)


V, LOC, A = (2, 19, 2, 3), (2, 3, 2, 3, 2, 2), (2, 3, 2, 3, 2)
BAD_ARGUMENTS = [
    (dict(value=np.zeros(V[:3])), ValueError, r"value must be 4-D \(N, S, M, D\), got 3-D"),
    (dict(value="value"), TypeError, "value must be a Tensor or array-like, got str"),
    (dict(sampling_locations=np.zeros(LOC[:5])), ValueError,
     r"sampling_locations must be 6-D \(N, Q, M, L, P, 2\), got 5-D"),
    (dict(attention_weights=np.zeros(A + (1,))), ValueError,
     r"attention_weights must be 5-D \(N, Q, M, L, P\), got 6-D"),
    (dict(value=np.zeros(V, dtype=np.float32)), TypeError,
     "all tensors must have one dtype, got value float32, sampling_locations float64"),
    (dict(attention_weights=Tensor(np.zeros(A), dtype=np.float32)), TypeError,
     "all tensors must have one dtype, .*attention_weights float32"),
    (dict(value=np.zeros((2, 19, 0, 3))), ValueError,
     r"value may have an empty batch \(axis 0\) but no other zero-sized axis"),
    (dict(sampling_locations=np.zeros((2, 0, 2, 3, 2, 2)),
          attention_weights=np.zeros((2, 0, 2, 3, 2))), ValueError,
     "sampling_locations may have an empty batch"),
    (dict(spatial_shapes=np.array([[3.0, 4.0], [2, 2], [1, 3]])), TypeError,
     "spatial_shapes must hold integers .rows .H_l, W_l.., got dtype float64"),
    (dict(spatial_shapes=np.ones((3, 2), dtype=bool)), TypeError,
     "spatial_shapes must hold integers .*got dtype bool"),
    (dict(spatial_shapes=[[3, 4], [2, True], [1, 3]]), TypeError,
     "spatial_shapes must hold integers .*holding a bool"),
    (dict(spatial_shapes=Tensor([[3, 4], [2, 2], [1, 3]])), TypeError,
     "spatial_shapes must hold integers .*got a minidcn Tensor"),
    (dict(spatial_shapes=[[3, 4], [2, 2], [1]]), TypeError,
     "spatial_shapes must be an .L, 2. array of integers, got list"),
    (dict(spatial_shapes=[["3", "4"]]), TypeError, "spatial_shapes must hold integers"),
    (dict(spatial_shapes=[12, 7]), ValueError,
     r"spatial_shapes must have shape \(L, 2\) with L >= 1, rows \(H_l, W_l\), got shape \(2,\)"),
    (dict(spatial_shapes=np.zeros((0, 2), dtype=np.int64)), ValueError,
     r"spatial_shapes must have shape \(L, 2\) with L >= 1.*got shape \(0, 2\)"),
    (dict(spatial_shapes=[[3, 4, 1], [2, 2, 1]]), ValueError,
     r"spatial_shapes must have shape .*got shape \(2, 3\)"),
    (dict(spatial_shapes=[[3, 4], [0, 2], [1, 7]]), ValueError,
     r"spatial_shapes\[1, 0\] \(H_1\) must be in \[1, 2\*\*31 - 1\] \(a level needs at least "
     r"one pixel\), got 0"),
    (dict(spatial_shapes=[[3, 4], [2, 2], [-1, -3]]), ValueError,
     r"spatial_shapes\[2, 0\] \(H_2\) must be in .*got -1"),
    (dict(spatial_shapes=[[3, 4], [2, 2], [1, 2**31]]), ValueError,
     r"spatial_shapes\[2, 1\] \(W_2\) must be in .*got 2147483648"),
    (dict(spatial_shapes=np.array([[3, 4], [2, 2], [1, 2**40]], dtype=np.uint64)), ValueError,
     r"spatial_shapes\[2, 1\] \(W_2\).*got 1099511627776"),
    (dict(spatial_shapes=[[3, 4], [2, 2], [1, 2**70]]), ValueError,
     r"spatial_shapes\[2, 1\] \(W_2\).*got about 2\*\*70"),
    (dict(spatial_shapes=[[3, 4], [2, 2], [1, 2]]), ValueError,
     r"spatial_shapes \[\[3, 4\], \[2, 2\], \[1, 2\]\] covers Σ H_l W_l = 18 rows, expected "
     r"value's S axis, 19"),
    (dict(spatial_shapes=[[2, 5], [2, 2], [1, 3], [1, 2]]), ValueError,
     r"sampling_locations must have shape \(N, Q, M, L, P, 2\) = \(2, 3, 2, 4, 2, 2\)"),
    (dict(sampling_locations=np.zeros((1,) + LOC[1:])), ValueError,
     r"sampling_locations must have shape .* = \(2, 3, 2, 3, 2, 2\) \(N = 2 and M = 2 from "
     r"value \(2, 19, 2, 3\), L = 3 from spatial_shapes.*got \(1, 3, 2, 3, 2, 2\)"),
    (dict(sampling_locations=np.zeros(LOC[:2] + (3,) + LOC[3:])), ValueError,
     r"sampling_locations must have shape"),
    (dict(sampling_locations=np.zeros(LOC[:5] + (3,))), ValueError,
     r"sampling_locations must have shape .*2 for \(x, y\)\), got \(2, 3, 2, 3, 2, 3\)"),
    (dict(attention_weights=np.zeros(A[:4] + (3,))), ValueError,
     r"attention_weights must have shape \(N, Q, M, L, P\) = \(2, 3, 2, 3, 2\) .*got "
     r"\(2, 3, 2, 3, 3\)"),
    (dict(attention_weights=np.zeros((2, 4) + A[2:])), ValueError,
     r"attention_weights must have shape"),
]


@pytest.mark.parametrize("changes, error, message", BAD_ARGUMENTS)
def test_bad_input_is_rejected_before_any_kernel_runs(monkeypatch, changes, error, message):
    def no_kernels(device):
        raise AssertionError("a kernel was looked up before validation finished")

    monkeypatch.setattr(functional_module, "kernels", no_kernels)
    with pytest.raises(error, match="multi_scale_deform_attn: " + message):
        msda(**{**good_arguments(), **changes})


def test_good_arguments_reach_the_kernels():
    """The bad-input cases above differ from these only by the change they name."""
    with minidcn.backend("reference"):
        assert msda(**good_arguments()).shape == (2, 3, 6)


def test_a_huge_output_is_refused_before_allocation():
    value = np.zeros((1, 1, 2**16, 2**15), dtype=np.float32)[:, :, :1, :1]
    with pytest.raises(ValueError, match="the output would have shape"):
        msda(np.broadcast_to(value, (1, 1, 2**16, 2**15)), [[1, 1]],
             np.broadcast_to(np.zeros((1, 1, 1, 1, 1, 2), np.float32), (1, 1, 2**16, 1, 1, 2)),
             np.broadcast_to(np.zeros((1, 1, 1, 1, 1), np.float32), (1, 1, 2**16, 1, 1)))


@pytest.mark.cuda
def test_tensors_on_two_devices_are_rejected():
    arguments = good_arguments()
    arguments["attention_weights"] = Tensor(arguments["attention_weights"]).to("cuda")
    with pytest.raises(ValueError, match="multi_scale_deform_attn: all tensors must be on one "
                                         "device, got value on cpu, sampling_locations on cpu, "
                                         "attention_weights on cuda"):
        msda(**arguments)


# ---------------------------------------------------------------- torch
def torch_multi_scale_deform_attn(torch, value, shapes, locations, weights):
    """The op in pure torch with grid_sample, level by level, heads folded into the batch
    (grid_sample's grid runs from -1 to 1 across the map: g = 2 u - 1)."""
    import torch.nn.functional as TF

    batch, _, heads, channels = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    out = 0
    for level, part in enumerate(value.split([int(h * w) for h, w in shapes], dim=1)):
        height, width = (int(n) for n in shapes[level])
        image = part.permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        grid = (2 * locations[:, :, :, level] - 1).transpose(1, 2).reshape(
            batch * heads, queries, points, 2)
        sampled = TF.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)  # (N M, D, Q, P)
        a = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        out = out + (sampled * a).sum(-1)
    return out.reshape(batch, heads, channels, queries).permute(0, 3, 1, 2).reshape(
        batch, queries, heads * channels)


def test_matches_a_pure_torch_grid_sample_implementation():
    torch = pytest.importorskip("torch")
    value, shapes, locations, weights, g = case(15, batch=2, queries=4, heads=3, channels=4,
                                                points=3)
    ts = [torch.tensor(a, requires_grad=True) for a in (value, locations, weights)]
    out = torch_multi_scale_deform_attn(torch, ts[0], shapes, ts[1], ts[2])
    out.backward(torch.tensor(g))
    expected = [out.detach().numpy()] + [t.grad.numpy() for t in ts]
    for name, e, r in zip(["out", "grad_value", "grad_locations", "grad_weights"], expected,
                          forward_and_grads("numba", value, shapes, locations, weights, g)):
        np.testing.assert_allclose(r, e, rtol=0, atol=1e-12, err_msg=name)
