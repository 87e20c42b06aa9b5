"""conv2d: the formula, its gradients, the three backends, torch, bad input, and nn.Conv2d."""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from minidcn.backends import numba_cpu, reference
from minidcn.backends.numba_cpu import conv as numba_conv
from helpers import gradcheck_on, host, on, run, tensors

# (B, C_in, C_out, H, W, kh, kw, stride, padding, dilation, groups)
PLAIN = (2, 2, 2, 4, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1)
EVERYTHING = (1, 4, 2, 5, 6, 2, 3, (2, 1), (1, 0), (1, 2), 2)
TINY_CUDA_CASES = [  # the simulator runs one Python thread per element: keep these tiny
    (1, 2, 2, 4, 3, 3, 2, (1, 2), (1, 1), (1, 1), 1),
    (2, 2, 4, 3, 5, 2, 2, (2, 1), (0, 2), (2, 1), 2),
]
CUDA_GRADCHECK_CASE = (1, 2, 2, 3, 4, 2, 2, (2, 1), (1, 0), (1, 2), 2)


def conv2d_by_definition(x, w, b, stride, padding, dilation, groups):
    """y[b, o, i, j] = bias[o] + Σ_{c,u,v} w[o,c,u,v] x[b, g·C_g + c, i·s - p + u·d, j·s - p + v·d], looped."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    batch, c_in, height, width = x.shape
    c_out, c_g, kh, kw = w.shape
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((batch, c_out, out_h, out_w))
    for o in range(c_out):
        g = o // (c_out // groups)
        y[:, o] = 0 if b is None else b[o]
        for i in range(out_h):
            for j in range(out_w):
                for c in range(c_g):
                    for u in range(kh):
                        for v in range(kw):
                            row, col = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= row < height and 0 <= col < width:
                                y[:, o, i, j] += w[o, c, u, v] * x[:, g * c_g + c, row, col]
    return y


def arrays_for(case, seed=0, bias=True):
    """((x, w, b or None), conv2d keyword arguments) for a case tuple."""
    batch, c_in, c_out, height, width, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in, height, width))
    w = rng.standard_normal((c_out, c_in // groups, kh, kw))
    b = rng.standard_normal(c_out) if bias else None
    return (x, w, b), dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_of(params):
    """fn(x, w, b=None) = conv2d(x, w, b, **params), for run() / gradcheck_on()."""
    return lambda x, w, b=None: F.conv2d(x, w, b, **params)


def present(arrays):
    """The arrays without a trailing None bias (run() and gradcheck_on() skip no None)."""
    return arrays if arrays[-1] is not None else arrays[:-1]


@st.composite
def conv_cases(draw):
    """Small (case, bias?) draws covering stride, padding, dilation, groups and asymmetry."""
    groups = draw(st.sampled_from([1, 2]))
    c_g, o_g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    sizes = [max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 3))
             for k, p, d in zip((kh, kw), padding, dilation)]
    case = (draw(st.integers(1, 2)), groups * c_g, groups * o_g, sizes[0], sizes[1], kh, kw,
            stride, padding, dilation, groups)
    return case, draw(st.booleans())


def assert_agree(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def assert_runs_agree(first, second, tol=1e-10):
    (out_a, grads_a), (out_b, grads_b) = first, second
    assert_agree(out_a, out_b, tol)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        assert_agree(a, b, tol)


# ---------------------------------------------------------------- the formula
@given(conv_cases(), st.integers(0, 2**16))
def test_reference_is_the_formula(drawn, seed):
    case, bias = drawn
    (x, w, b), params = arrays_for(case, seed, bias)
    with minidcn.backend("reference"):
        y = host(F.conv2d(Tensor(x), Tensor(w), None if b is None else Tensor(b), **params))
    assert_agree(y, conv2d_by_definition(x, w, b, **params), 1e-12)


def test_output_size_follows_the_formula():
    y = F.conv2d(np.zeros((1, 1, 10, 7)), np.zeros((1, 1, 3, 2)), stride=(3, 2),
                 padding=(2, 1), dilation=(2, 3))
    # H_out = (10 + 4 - (2*2 + 1)) // 3 + 1 = 4, W_out = (7 + 2 - (3*1 + 1)) // 2 + 1 = 3
    assert y.shape == (1, 1, 4, 3)


def test_int_and_pair_arguments_mean_the_same():
    (x, w, b), _ = arrays_for(PLAIN)
    a = F.conv2d(x, w, b, stride=2, padding=1, dilation=1)
    c = F.conv2d(x, w, b, stride=(2, 2), padding=[1, 1], dilation=(1, 1))
    np.testing.assert_array_equal(host(a), host(c))


@given(conv_cases(), st.integers(0, 2**16))
def test_matches_torch(drawn, seed):
    torch = pytest.importorskip("torch")
    case, bias = drawn
    arrays, params = arrays_for(case, seed, bias)
    ours = run("reference", conv_of(params), *present(arrays))
    ts = [torch.tensor(a, requires_grad=True) for a in present(arrays)]
    y = torch.nn.functional.conv2d(*ts, **params)
    y.backward(torch.tensor(np.random.default_rng(0).standard_normal(y.shape)))  # run()'s seed
    theirs = (y.detach().numpy(), [t.grad.numpy() for t in ts])
    assert_runs_agree(ours, theirs)


# ---------------------------------------------------------------- gradients
def test_gradcheck(backend_name):
    check = dict(names=["input", "weight", "bias"])
    cases = [PLAIN, EVERYTHING]
    if backend_name == "cuda":  # every simulated launch is slow: a tiny case, random directions
        cases, check = [CUDA_GRADCHECK_CASE], dict(check, max_entries=4, directions=4)
    for case in cases:
        arrays, params = arrays_for(case, seed=1)
        assert gradcheck_on(backend_name, conv_of(params), *arrays, **check)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_gradcheck_without_bias(backend):
    arrays, params = arrays_for(EVERYTHING, seed=2, bias=False)
    assert gradcheck_on(backend, conv_of(params), *present(arrays), names=["input", "weight"])


def test_a_first_layer_skips_the_input_gradient(backend_name):
    """An input that needs no gradient gets none, and the weight and bias gradients stay."""
    case = CUDA_GRADCHECK_CASE if backend_name == "cuda" else EVERYTHING
    (x, w, b), params = arrays_for(case, seed=3)
    _, (_, full_w, full_b) = run(backend_name, conv_of(params), x, w, b)
    with on(backend_name) as device:
        xt, = tensors(device, x)  # requires_grad=False: the kernel is told to skip grad_x
        wt, bt = tensors(device, w, b, requires_grad=True)
        out = F.conv2d(xt, wt, bt, **params)
        out.backward(Tensor(np.random.default_rng(0).standard_normal(out.shape)).to(device))
        assert xt.grad is None
        np.testing.assert_allclose(host(wt.grad), full_w, atol=1e-12)
        np.testing.assert_allclose(host(bt.grad), full_b, atol=1e-12)
        ops = minidcn.backends.kernels(device)
        grad_y = Tensor(np.ones(out.shape)).to(device).data
        args = (params["stride"], params["padding"], params["dilation"], params["groups"])
        assert ops.conv2d_backward(grad_y, xt.data, wt.data, *args, need_grad_input=False)[0] is None


# ---------------------------------------------------------------- backends agree
@given(conv_cases(), st.integers(0, 2**16))
def test_numba_agrees_with_reference(drawn, seed):
    case, bias = drawn
    arrays, params = arrays_for(case, seed, bias)
    fn = conv_of(params)
    assert_runs_agree(run("numba", fn, *present(arrays)), run("reference", fn, *present(arrays)))


@pytest.mark.cuda
@pytest.mark.parametrize("case", TINY_CUDA_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_cuda_agrees_with_reference(case, bias):
    arrays, params = arrays_for(case, seed=4, bias=bias)
    fn = conv_of(params)
    assert_runs_agree(run("cuda", fn, *present(arrays)), run("reference", fn, *present(arrays)))


@pytest.mark.parametrize("stride", [(1, 1), (2, 3)])
def test_numba_chunks_of_images_give_the_same_result(monkeypatch, stride):
    """A scratch budget of one image's buffers forces one image per chunk."""
    (x, w, b), params = arrays_for((5, 2, 3, 6, 5, 3, 3, stride, (1, 1), (1, 1), 1), seed=5)
    whole = run("numba", conv_of(params), x, w, b)
    plan = numba_conv._Plan(x, w, stride, (1, 1), (1, 1), 1)
    monkeypatch.setattr(numba_conv, "CHUNK_BUFFER_BYTES", plan.image_bytes)
    assert numba_conv._Plan(x, w, stride, (1, 1), (1, 1), 1).chunk_bounds == [(n, n + 1) for n in range(5)]
    assert_runs_agree(run("numba", conv_of(params), x, w, b), whole, 1e-13)


def test_numba_is_bitwise_reproducible_across_thread_counts():
    arrays, params = arrays_for((3, 4, 4, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1), 2), seed=6)
    threads, most = numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS
    if most == 1:
        pytest.skip("numba has a single thread here: nothing to compare")
    try:
        numba.set_num_threads(1)
        one = run("numba", conv_of(params), *arrays)
        numba.set_num_threads(most)
        many = run("numba", conv_of(params), *arrays)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one[0], many[0])
    for a, b in zip(one[1], many[1]):
        np.testing.assert_array_equal(a, b)


def test_float32_stays_float32(backend_name):
    case = TINY_CUDA_CASES[1] if backend_name == "cuda" else EVERYTHING
    (x, w, b), params = arrays_for(case, seed=3)

    def forward_backward(backend, dtype):
        with on(backend) as device:
            ts = [Tensor(a, dtype=dtype).to(device).requires_grad_() for a in (x, w, b)]
            y = F.conv2d(*ts, **params)
            y.sum().backward()
            assert y.dtype == dtype and y.device == device
            assert all(t.grad.dtype == dtype for t in ts)
            return [host(y)] + [host(t.grad) for t in ts]

    for got, exact in zip(forward_backward(backend_name, np.float32),
                          forward_backward("reference", np.float64)):
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


def strided_copy(a):
    """The values of ``a`` in a view that is neither C- nor Fortran-contiguous."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],))
    view = big[..., ::2]
    view[...] = a
    return view


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_host_kernels_accept_non_contiguous_and_fortran_arrays(backend):
    (x, w, b), params = arrays_for(EVERYTHING, seed=7)
    ops = {"reference": reference, "numba": numba_cpu}[backend]
    args = (params["stride"], params["padding"], params["dilation"], params["groups"])
    y = ops.conv2d_forward(x, w, b, *args)
    grad_y = np.random.default_rng(8).standard_normal(y.shape)
    grads = ops.conv2d_backward(grad_y, x, w, *args)
    for xx, ww, gy in [(np.asfortranarray(x), np.asfortranarray(w), np.asfortranarray(grad_y)),
                       (strided_copy(x), strided_copy(w), strided_copy(grad_y))]:
        assert not (xx.flags.c_contiguous or ww.flags.c_contiguous or gy.flags.c_contiguous)
        np.testing.assert_array_equal(ops.conv2d_forward(xx, ww, b, *args), y)
        for a, c in zip(ops.conv2d_backward(gy, xx, ww, *args), grads):
            np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------- bad input
GOOD = dict(input=np.zeros((1, 4, 5, 5)), weight=np.zeros((6, 2, 3, 3)), bias=np.zeros(6), groups=2)


@pytest.mark.parametrize("change, error, message", [
    (dict(input=np.zeros((4, 5, 5))), ValueError, r"conv2d: input must be 4-D \(B, C_in, H, W\), got 3-D"),
    (dict(weight=np.zeros((6, 2, 3))), ValueError, "conv2d: weight must be 4-D"),
    (dict(bias=np.zeros((6, 1))), ValueError, "conv2d: bias must be 1-D"),
    (dict(input=np.zeros((1, 3, 5, 5))), ValueError, "conv2d: input has 3 channels, expected weight.shape"),
    (dict(groups=1), ValueError, r"input has 4 channels, expected weight.shape\[1\] \* groups = 2 \* 1 = 2"),
    (dict(weight=np.zeros((5, 2, 3, 3)), bias=np.zeros(5)), ValueError, "out channels weight.shape.0. = 5 must be divisible by groups = 2"),
    (dict(bias=np.zeros(5)), ValueError, r"conv2d: bias must have shape \(6,\)"),
    (dict(weight=np.zeros((6, 2, 0, 3))), ValueError, "weight must have no zero-sized axis"),
    (dict(stride=0), ValueError, "conv2d: stride must be >= 1, got 0"),
    (dict(stride=(1, -1)), ValueError, "conv2d: stride must be >= 1, got -1"),
    (dict(dilation=0), ValueError, "conv2d: dilation must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "conv2d: padding must be >= 0, got -1"),
    (dict(padding=(1, 2, 3)), ValueError, "conv2d: padding must be an int or a pair"),
    (dict(stride=1.5), TypeError, "conv2d: stride must be an int, got float"),
    (dict(groups=0), ValueError, "conv2d: groups must be >= 1, got 0"),
    (dict(groups="2"), TypeError, "conv2d: groups must be an int, got str"),
    (dict(weight=np.zeros((6, 2, 7, 3))), ValueError, "conv2d: kernel height with dilation spans 7 but the padded input height is only 5"),
    (dict(dilation=(1, 3)), ValueError, "kernel width with dilation spans 7 but the padded input width is only 5"),
    (dict(input=np.full((1, 4, 5, 5), "a")), TypeError, "conv2d: input .*numeric"),
    (dict(weight="w"), TypeError, "conv2d: weight must be a Tensor or array-like, got str"),
    (dict(bias=np.zeros(6, np.float32)), TypeError, "conv2d: all tensors must have one dtype, got input float64, weight float64, bias float32"),
])
def test_bad_input_is_rejected(change, error, message):
    args = {**GOOD, **change}
    with pytest.raises(error, match=message):
        F.conv2d(**args)


@pytest.mark.cuda
def test_mixed_devices_are_rejected():
    x = Tensor(np.zeros((1, 2, 3, 3)))
    w = Tensor(np.zeros((1, 2, 1, 1))).to("cuda")
    with pytest.raises(ValueError, match="conv2d: all tensors must be on one device, got input on cpu, weight on cuda"):
        F.conv2d(x, w)


# ---------------------------------------------------------------- nn.Conv2d
def test_conv2d_layer_initialises_like_torch():
    layer = nn.Conv2d(8, 6, (3, 2), groups=2, generator=np.random.default_rng(0))
    bound = 1 / np.sqrt(8 // 2 * 3 * 2)  # fan_in = in_channels / groups * kh * kw
    assert layer.weight.shape == (6, 4, 3, 2) and layer.bias.shape == (6,)
    assert layer.weight.dtype == np.float32
    for p in (layer.weight, layer.bias):
        assert np.all(np.abs(p.numpy()) <= bound) and p.requires_grad
    assert np.abs(layer.weight.numpy()).max() > 0.8 * bound  # spread over the whole range
    big = nn.Conv2d(64, 64, 3, generator=np.random.default_rng(1)).weight.numpy()
    assert abs(big.std() - (1 / np.sqrt(64 * 9)) / np.sqrt(3)) < 0.01 / np.sqrt(64 * 9)


def test_conv2d_layer_is_reproducible_and_optional_bias():
    a = nn.Conv2d(2, 3, 3, generator=np.random.default_rng(5), dtype=np.float64)
    b = nn.Conv2d(2, 3, 3, generator=np.random.default_rng(5), dtype=np.float64)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), b.bias.numpy())
    assert a.weight.dtype == np.float64
    no_bias = nn.Conv2d(2, 3, 3, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]


def test_conv2d_layer_computes_functional_conv2d():
    layer = nn.Conv2d(4, 2, 3, stride=2, padding=1, dilation=(1, 2), groups=2,
                      generator=np.random.default_rng(2))
    x = Tensor(np.random.default_rng(3).standard_normal((2, 4, 7, 6)).astype(np.float32))
    expected = F.conv2d(x, layer.weight, layer.bias, 2, 1, (1, 2), 2)
    np.testing.assert_array_equal(host(layer(x)), host(expected))
    layer(x).sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape and layer.bias.grad.shape == (2,)
    assert "Conv2d(4, 2, kernel_size=(3, 3), stride=(2, 2)" in repr(layer)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=3, groups=2), "Conv2d: in_channels = 3 must be divisible by groups = 2"),
    (dict(out_channels=3, groups=2), "Conv2d: out_channels = 3 must be divisible by groups = 2"),
    (dict(kernel_size=0), "Conv2d: kernel_size must be >= 1"),
    (dict(in_channels=0), "Conv2d: in_channels must be >= 1"),
])
def test_conv2d_layer_rejects_bad_arguments(kwargs, message):
    args = {**dict(in_channels=4, out_channels=4, kernel_size=3), **kwargs}
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(**args)


def test_conv2d_layer_rejects_a_non_float_dtype():
    with pytest.raises(TypeError, match="Conv2d: dtype must be float32 or float64, got int64"):
        nn.Conv2d(2, 2, 3, dtype=np.int64)
