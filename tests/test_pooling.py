"""max_pool2d and avg_pool2d: the definitions, gradients, backends, torch, bad input, layers."""

import numba
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from minidcn.backends import numba_cpu, reference
from minidcn.functional.pooling import _has_empty_window
from helpers import gradcheck_on, host, on, run


def windows(x, kernel, stride, padding, dilation):
    """Yield (b, c, i, j, [(row, col) of the window inside the image]) in row-major window order."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    batch, channels, height, width = x.shape
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    for b in range(batch):
        for c in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    pixels = [(i * sh - ph + u * dh, j * sw - pw + v * dw)
                              for u in range(kh) for v in range(kw)]
                    yield b, c, i, j, [(r, q) for r, q in pixels if 0 <= r < height and 0 <= q < width]


def out_shape(x, kernel, stride, padding, dilation):
    return x.shape[:2] + tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation))


def max_pool_by_definition(x, kernel, stride, padding, dilation):
    """(y, argmax): the first maximum of each window, a NaN replacing whatever came before."""
    shape = out_shape(x, kernel, stride, padding, dilation)
    y, argmax = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    for b, c, i, j, pixels in windows(x, kernel, stride, padding, dilation):
        best = None
        for r, q in pixels:
            if best is None or x[b, c, r, q] > x[b, c][best] or np.isnan(x[b, c, r, q]):
                best = (r, q)
        y[b, c, i, j], argmax[b, c, i, j] = x[b, c][best], best[0] * x.shape[3] + best[1]
    return y, argmax


def avg_pool_by_definition(x, kernel, stride, padding, count_include_pad):
    y = np.zeros(out_shape(x, kernel, stride, padding, (1, 1)))
    for b, c, i, j, pixels in windows(x, kernel, stride, padding, (1, 1)):
        divisor = kernel[0] * kernel[1] if count_include_pad else len(pixels)
        y[b, c, i, j] = sum(x[b, c, r, q] for r, q in pixels) / divisor
    return y


def distinct_values(shape, seed):
    """Values at least 0.1 apart: no window has a tie within a finite-difference step."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) - 10.0) * 0.1


@st.composite
def pool_cases(draw, with_dilation=True, max_extra=3):
    """(input shape, kernel, stride, padding, dilation) with padding <= kernel // 2."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if with_dilation else (1, 1)
    sizes = [max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, max_extra))
             for k, p, d in zip(kernel, padding, dilation)]
    for n, k, s, p, d in zip(sizes, kernel, stride, padding, dilation):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        assume(not _has_empty_window(n, k, s, p, d, out))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + tuple(sizes)
    return shape, kernel, stride, padding, dilation


def max_pool_of(kernel, stride, padding, dilation):
    return lambda x: F.max_pool2d(x, kernel, stride, padding, dilation)


def avg_pool_of(kernel, stride, padding, count_include_pad):
    return lambda x: F.avg_pool2d(x, kernel, stride, padding, count_include_pad=count_include_pad)


def assert_runs_agree(first, second, tol=1e-10):
    (out_a, (grad_a,)), (out_b, (grad_b,)) = first, second
    np.testing.assert_allclose(out_a, out_b, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad_a, grad_b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- the definitions
@given(pool_cases(), st.integers(0, 2**16))
def test_max_pool_reference_is_the_definition(case, seed):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(np.float64)  # many ties
    x[rng.random(shape) < 0.1] = np.nan
    y, argmax = reference.max_pool2d_forward(x, kernel, stride, padding, dilation)
    expected_y, expected_argmax = max_pool_by_definition(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)


@given(pool_cases(with_dilation=False), st.booleans(), st.integers(0, 2**16))
def test_avg_pool_reference_is_the_definition(case, count_include_pad, seed):
    shape, kernel, stride, padding, _ = case
    x = np.random.default_rng(seed).standard_normal(shape)
    with minidcn.backend("reference"):
        y = host(F.avg_pool2d(Tensor(x), kernel, stride, padding, count_include_pad=count_include_pad))
    expected = avg_pool_by_definition(x, kernel, stride, padding, count_include_pad)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_padding_never_wins_a_max_and_counts_as_zero_in_an_average(backend_name):
    x = -np.ones((1, 1, 2, 2))
    with on(backend_name) as device:
        t = Tensor(x).to(device)
        np.testing.assert_array_equal(host(F.max_pool2d(t, 3, 1, 1)), -np.ones((1, 1, 2, 2)))
        np.testing.assert_allclose(host(F.avg_pool2d(t, 3, 1, 1)), np.full((1, 1, 2, 2), -4 / 9))
        np.testing.assert_allclose(host(F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)), -1)


def test_a_pixel_that_wins_two_windows_collects_both_gradients(backend_name):
    x = np.array([[[[1.0, 5.0, 2.0]]]])
    out, (grad_x,) = run(backend_name, lambda t: F.max_pool2d(t, (1, 2), 1), x, grad_seed=3)
    grad_y = np.random.default_rng(3).standard_normal((1, 1, 1, 2))
    np.testing.assert_array_equal(out, [[[[5.0, 5.0]]]])
    np.testing.assert_allclose(grad_x, [[[[0.0, grad_y.sum(), 0.0]]]], rtol=1e-15)


def test_stride_defaults_to_the_kernel_size():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    assert F.max_pool2d(x, 3).shape == (1, 1, 2, 2)
    assert F.avg_pool2d(x, (2, 3)).shape == (1, 1, 3, 2)


@given(pool_cases(), st.integers(0, 2**16))
def test_max_pool_matches_torch(case, seed):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(np.float64)
    y, argmax = reference.max_pool2d_forward(x, kernel, stride, padding, dilation)
    ours = run("reference", max_pool_of(kernel, stride, padding, dilation), x)
    tx = torch.tensor(x, requires_grad=True)
    ty, indices = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, dilation,
                                                 return_indices=True)
    ty.backward(torch.tensor(np.random.default_rng(0).standard_normal(ty.shape)))  # run()'s seed
    np.testing.assert_array_equal(argmax, indices.numpy())
    assert_runs_agree(ours, (ty.detach().numpy(), [tx.grad.numpy()]))


def test_max_pool_nan_handling_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [7.0, 2.0, np.nan, 0.0]]]])
    y, argmax = reference.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0), (1, 1))
    ty, indices = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(argmax, indices.numpy())


@given(pool_cases(with_dilation=False), st.booleans(), st.integers(0, 2**16))
def test_avg_pool_matches_torch(case, count_include_pad, seed):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, padding, _ = case
    x = np.random.default_rng(seed).standard_normal(shape)
    ours = run("reference", avg_pool_of(kernel, stride, padding, count_include_pad), x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, kernel, stride, padding,
                                        count_include_pad=count_include_pad)
    ty.backward(torch.tensor(np.random.default_rng(0).standard_normal(ty.shape)))
    assert_runs_agree(ours, (ty.detach().numpy(), [tx.grad.numpy()]))


# ---------------------------------------------------------------- gradients
GRADCHECK_CASES = {
    "host": ((2, 2, 5, 6), (3, 2), (2, 1), (1, 1), (1, 2)),
    "cuda": ((1, 1, 4, 5), (3, 2), (2, 1), (1, 1), (1, 2)),  # the simulator is slow
}


def test_max_pool_gradcheck(backend_name):
    shape, kernel, stride, padding, dilation = GRADCHECK_CASES["cuda" if backend_name == "cuda" else "host"]
    x = distinct_values(shape, seed=1)
    assert gradcheck_on(backend_name, max_pool_of(kernel, stride, padding, dilation), x)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_gradcheck(backend_name, count_include_pad):
    shape, kernel, stride, padding, _ = GRADCHECK_CASES["cuda" if backend_name == "cuda" else "host"]
    x = np.random.default_rng(2).standard_normal(shape)
    assert gradcheck_on(backend_name, avg_pool_of(kernel, stride, padding, count_include_pad), x)


# ---------------------------------------------------------------- backends agree
def kernel_outputs(ops, x, case, count_include_pad, grad_seed=0):
    """Both ops' forward and backward kernels, as host arrays (argmax included)."""
    _, kernel, stride, padding, dilation = case
    y, argmax = ops.max_pool2d_forward(x, kernel, stride, padding, dilation)
    grad_y = np.random.default_rng(grad_seed).standard_normal(y.shape)
    grad_max = ops.max_pool2d_backward(grad_y, argmax, x.shape)
    avg = ops.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    grad_avg_y = np.random.default_rng(grad_seed + 1).standard_normal(avg.shape)
    grad_avg = ops.avg_pool2d_backward(grad_avg_y, x.shape, kernel, stride, padding, count_include_pad)
    return y, argmax, grad_max, avg, grad_avg


@given(pool_cases(with_dilation=False), st.booleans(), st.integers(0, 2**16))
def test_numba_kernels_agree_with_reference(case, count_include_pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=case[0]).astype(np.float64)
    x[rng.random(case[0]) < 0.1] = np.nan
    got = kernel_outputs(numba_cpu, x, case, count_include_pad)
    expected = kernel_outputs(reference, x, case, count_include_pad)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)  # NaN == NaN here


@given(pool_cases(), st.integers(0, 2**16))
def test_numba_max_pool_agrees_with_reference_with_dilation(case, seed):
    x = np.random.default_rng(seed).standard_normal(case[0])
    fn = max_pool_of(*case[1:])
    assert_runs_agree(run("numba", fn, x), run("reference", fn, x))


CUDA_CASES = [((1, 2, 4, 5), (3, 2), (2, 1), (1, 1), (1, 2)),
              ((2, 1, 5, 3), (2, 3), (1, 2), (1, 0), (2, 1))]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_agrees_with_reference(case):
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, size=case[0]).astype(np.float64)  # ties and overlapping windows
    max_pool = max_pool_of(*case[1:])
    assert_runs_agree(run("cuda", max_pool, x), run("reference", max_pool, x))
    for count_include_pad in (True, False):
        avg_pool = avg_pool_of(*case[1:4], count_include_pad)
        assert_runs_agree(run("cuda", avg_pool, x), run("reference", avg_pool, x))


def test_numba_is_bitwise_reproducible_across_thread_counts():
    x = np.random.default_rng(5).integers(-3, 4, size=(2, 3, 9, 8)).astype(np.float64)
    case = (x.shape, (3, 3), (1, 2), (1, 1), (1, 1))
    threads, most = numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS
    if most == 1:
        pytest.skip("numba has a single thread here: nothing to compare")
    try:
        numba.set_num_threads(1)
        one = kernel_outputs(numba_cpu, x, case, False)
        numba.set_num_threads(most)
        many = kernel_outputs(numba_cpu, x, case, False)
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_float32_stays_float32(backend_name):
    x = distinct_values((1, 2, 4, 5), seed=6)
    for pool in (max_pool_of((2, 2), 1, 1, 1), avg_pool_of((3, 2), 1, 1, False)):
        with on(backend_name) as device:
            t = Tensor(x, dtype=np.float32).to(device).requires_grad_()
            y = pool(t)
            y.sum().backward()
            assert y.dtype == np.float32 and t.grad.dtype == np.float32 and y.device == device
            got = host(y), host(t.grad)
        with on("reference"):
            t64 = Tensor(x, requires_grad=True)
            y64 = pool(t64)
            y64.sum().backward()
        np.testing.assert_allclose(got[0], host(y64), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1], host(t64.grad), rtol=1e-6, atol=1e-6)


def strided_copy(a):
    """The values of ``a`` in a view that is neither C- nor Fortran-contiguous."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    view = big[..., ::2]
    view[...] = a
    return view


@pytest.mark.parametrize("ops", [reference, numba_cpu], ids=["reference", "numba"])
def test_host_kernels_accept_non_contiguous_and_fortran_arrays(ops):
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 5))
    case = (x.shape, (3, 2), (2, 1), (1, 1), (1, 1))
    expected = kernel_outputs(ops, x, case, True)
    for layout in (np.asfortranarray, strided_copy):
        _, kernel, stride, padding, dilation = case
        y, argmax = ops.max_pool2d_forward(layout(x), kernel, stride, padding, dilation)
        grad_y = np.random.default_rng(0).standard_normal(y.shape)
        grad_max = ops.max_pool2d_backward(layout(grad_y), layout(argmax), x.shape)
        avg = ops.avg_pool2d_forward(layout(x), kernel, stride, padding, True)
        grad_avg_y = np.random.default_rng(1).standard_normal(avg.shape)
        grad_avg = ops.avg_pool2d_backward(layout(grad_avg_y), x.shape, kernel, stride, padding, True)
        for a, b in zip((y, argmax, grad_max, avg, grad_avg), expected):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- bad input
X = np.zeros((1, 2, 5, 5))


@pytest.mark.parametrize("fn", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input=np.zeros((2, 5, 5))), ValueError, r"{fn}: input must be 4-D \(B, C, H, W\), got 3-D"),
    (dict(kernel_size=0), ValueError, "{fn}: kernel_size must be >= 1, got 0"),
    (dict(kernel_size=(2, 2, 2)), ValueError, "{fn}: kernel_size must be an int or a pair"),
    (dict(kernel_size=2.0), TypeError, "{fn}: kernel_size must be an int, got float"),
    (dict(stride=0), ValueError, "{fn}: stride must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "{fn}: padding must be >= 0, got -1"),
    (dict(padding=2), ValueError, "{fn}: padding must be at most half the kernel size, got height padding 2 for kernel height 3"),
    (dict(kernel_size=(3, 2), padding=(1, 2)), ValueError, "got width padding 2 for kernel width 2 .at most 1."),
    (dict(kernel_size=7), ValueError, "{fn}: kernel height with dilation spans 7 but the padded input height is only 5"),
    (dict(ceil_mode=True), ValueError, "{fn}: ceil_mode=True is not supported, expected ceil_mode=False"),
    (dict(ceil_mode="no"), TypeError, "{fn}: ceil_mode must be a bool, got str"),
    (dict(input=np.full((1, 1, 3, 3), "x")), TypeError, "{fn}: input .*numeric"),
    (dict(input=None), TypeError, "{fn}: input must be a Tensor or array-like, got NoneType"),
])
def test_bad_input_is_rejected(fn, kwargs, error, message):
    args = {**dict(input=X, kernel_size=3), **kwargs}
    with pytest.raises(error, match=message.format(fn=fn)):
        getattr(F, fn)(**args)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dilation=0), ValueError, "max_pool2d: dilation must be >= 1, got 0"),
    (dict(input=np.zeros((1, 1, 2, 2)), kernel_size=2, stride=1, padding=1, dilation=3), ValueError,
     "max_pool2d: some windows along the height fall entirely in the padding"),
])
def test_bad_max_pool_input_is_rejected(kwargs, error, message):
    args = {**dict(input=X, kernel_size=3), **kwargs}
    with pytest.raises(error, match=message):
        F.max_pool2d(**args)


def test_bad_count_include_pad_is_rejected():
    with pytest.raises(TypeError, match="avg_pool2d: count_include_pad must be a bool, got int"):
        F.avg_pool2d(X, 3, count_include_pad=1)


# ---------------------------------------------------------------- layers
def test_pooling_layers_compute_the_functional_ops():
    x = Tensor(distinct_values((2, 3, 7, 6), seed=8), requires_grad=True)
    layers = [(nn.MaxPool2d(3, 2, 1, dilation=(1, 2)), F.max_pool2d(x, 3, 2, 1, (1, 2))),
              (nn.AvgPool2d((3, 2), 1, (1, 0), count_include_pad=False),
               F.avg_pool2d(x, (3, 2), 1, (1, 0), count_include_pad=False))]
    for layer, expected in layers:
        np.testing.assert_array_equal(host(layer(x)), host(expected))
        assert list(layer.parameters()) == []
    assert "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=(1, 2)" in repr(layers[0][0])
    with pytest.raises(ValueError, match="max_pool2d: ceil_mode=True is not supported"):
        nn.MaxPool2d(2, ceil_mode=True)(x)
