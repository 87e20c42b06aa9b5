"""The engine pieces of the channels-last blocks (DCNv3, DCNv4, deformable attention):
gelu (exact erf form), softmax, layer_norm over the last axis, linear on (N, H, W, C).

Gradients are checked by finite differences in float64 on every backend (cuda in the
simulator); numba and cuda agree with the reference; torch, when installed, is the
cross-check for every number it also computes.
"""

import math

import numpy as np
import pytest

import minidcn
from minidcn import Tensor, nn
from minidcn import functional as F
from tests.helpers import gradcheck_on, host, run

NOT_REFERENCE = ["numba", pytest.param("cuda", marks=pytest.mark.cuda)]


def randn(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def torch_or_skip():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------- gelu
def test_gelu_is_x_times_the_normal_cdf():
    """GELU(x) = x Φ(x), Φ(x) = ½ (1 + erf(x/√2)), checked with math.erf element by element,
    and its slope Φ(x) + x φ(x) against the derivative of that expression."""
    x = randn(3, 5, scale=3.0)
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()]).reshape(x.shape)
    density = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    for backend in ("reference", "numba"):
        out, (grad,) = run(backend, F.gelu, x)
        np.testing.assert_allclose(out, x * cdf, rtol=1e-15, atol=1e-16)
        g = np.random.default_rng(0).standard_normal(x.shape)  # run's output gradient
        np.testing.assert_allclose(grad, g * (cdf + x * density), rtol=1e-14, atol=1e-16)


def test_gelu_gradcheck(backend_name):
    gradcheck_on(backend_name, F.gelu, randn(2, 3, scale=2.0))


@pytest.mark.parametrize("other", NOT_REFERENCE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_backends_agree_with_the_reference(other, dtype):
    """Every backend computes in float64 and rounds once: the float32 results agree to
    the last bit or one rounding step; float64 to round-off."""
    x = randn(4, 3, 2, scale=3.0, seed=1).astype(dtype)
    results = {}
    for backend in ("reference", other):
        with minidcn.backend("numba" if backend == "cuda" else backend):
            device = "cuda" if backend == "cuda" else "cpu"
            t = Tensor(x, dtype=dtype).to(device).requires_grad_()
            out = F.gelu(t)
            out.backward(Tensor(np.ones(x.shape), dtype=dtype).to(device))
            assert out.dtype == dtype and t.grad.dtype == dtype and out.device == device
            results[backend] = host(out), host(t.grad)
    tol = 1e-7 if dtype == np.float32 else 1e-15
    for a, b in zip(results["reference"], results[other]):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


def test_gelu_at_the_edges_gives_torchs_values(backend_name):
    """+inf -> inf, -inf -> -inf·0 = nan, nan -> nan; slopes nan at ±inf (as torch), 0 far
    below, 1 far above."""
    x = np.array([np.inf, -np.inf, np.nan, -40.0, 40.0, 1e200, -1e200, 0.0])
    out, (grad,) = run(backend_name, F.gelu, x, grad_seed=0)
    g = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(out, [np.inf, np.nan, np.nan, 0.0, 40.0, 1e200, 0.0, 0.0])
    np.testing.assert_array_equal(grad, [np.nan, np.nan, np.nan, 0.0, g[4], g[5], 0.0, g[7] / 2])


def test_gelu_of_empty_and_0d_inputs(backend_name):
    for x in (np.zeros((0, 3)), np.array(1.5)):
        out, (grad,) = run(backend_name, F.gelu, x)
        assert out.shape == x.shape and grad.shape == x.shape


def test_gelu_matches_torch():
    torch = torch_or_skip()
    x = randn(5, 7, scale=4.0, seed=2)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(xt).sum().backward()
    for dtype, tol in ((np.float64, 1e-14), (np.float32, 1e-6)):
        t = Tensor(x, dtype=dtype, requires_grad=True)
        F.gelu(t).sum().backward()
        np.testing.assert_allclose(F.gelu(t).numpy(), torch.nn.functional.gelu(xt).detach().numpy(),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    assert isinstance(nn.GELU()(Tensor(x)), Tensor)
    np.testing.assert_array_equal(nn.GELU()(Tensor(x)).numpy(), F.gelu(Tensor(x)).numpy())


def test_gelu_refuses_what_is_not_a_tensor():
    with pytest.raises(TypeError, match="gelu: input must be a Tensor or array-like, got str"):
        F.gelu("x")


# ---------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dim", [0, -1, 2])
def test_softmax_gradcheck(backend_name, dim):
    gradcheck_on(backend_name, lambda a: F.softmax(a, dim), randn(2, 3, 2))


def test_softmax_is_normalised_stable_and_exp_of_log_softmax():
    x = randn(3, 4, seed=3)
    out = F.softmax(Tensor(x), 1).numpy()
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(out, np.exp(F.log_softmax(Tensor(x), 1).numpy()), rtol=1e-14)
    shifted = F.softmax(Tensor(x + 1000.0), 1).numpy()  # e^1000 would overflow unshifted
    np.testing.assert_allclose(shifted, out, rtol=1e-12)
    assert F.softmax(Tensor(np.zeros((0, 3))), 1).shape == (0, 3)


def test_softmax_matches_torch_and_the_module():
    torch = torch_or_skip()
    x = randn(2, 3, 5, seed=4)
    xt = torch.tensor(x, requires_grad=True)
    w = randn(2, 3, 5, seed=5)
    (torch.softmax(xt, -1) * torch.tensor(w)).sum().backward()
    t = Tensor(x, requires_grad=True)
    out = nn.Softmax(-1)(t)
    (out * Tensor(w)).sum().backward()
    np.testing.assert_allclose(out.numpy(), torch.softmax(xt, -1).detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert repr(nn.Softmax(-1)) == "Softmax(dim=-1)"


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.softmax(Tensor(1.0), 0), ValueError, "softmax: input must be at least 1-D"),
    (lambda: F.softmax(Tensor(np.zeros((2, 3))), 2), ValueError, "softmax: dim 2 is out of range"),
    (lambda: F.softmax(Tensor(np.zeros((2, 3))), None), TypeError, "softmax: dim must be one int"),
    (lambda: nn.Softmax(1.0), TypeError, "Softmax: dim must be an int, got 1.0"),
])
def test_softmax_refuses_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------- layer_norm, last axis
def layer_norm_last(x, w, b, eps):
    """torch.nn.LayerNorm(C) written out: each position's C values normalised on their own."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def test_layer_norm_channels_last_normalises_each_position():
    x, w, b = randn(2, 3, 4, 5, scale=3.0), randn(5, seed=1), randn(5, seed=2)
    for backend in ("reference", "numba"):
        with minidcn.backend(backend):
            out = F.layer_norm(Tensor(x), Tensor(w), Tensor(b), eps=1e-6, channels_last=True)
        np.testing.assert_allclose(out.numpy(), layer_norm_last(x, w, b, 1e-6), rtol=1e-12,
                                   atol=1e-13)


def test_layer_norm_default_layout_is_unchanged():
    """The default still normalises (N, C, *) over all of (C, *): group_norm with G = 1."""
    x, w, b = randn(2, 3, 4, 4), randn(3, seed=1), randn(3, seed=2)
    expected = F.group_norm(Tensor(x), 1, Tensor(w), Tensor(b)).numpy()
    np.testing.assert_array_equal(F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).numpy(), expected)
    np.testing.assert_array_equal(
        F.layer_norm(Tensor(x), Tensor(w), Tensor(b), channels_last=False).numpy(), expected)


def test_layer_norm_channels_last_gradcheck(backend_name):
    shape = (2, 3) if backend_name == "cuda" else (2, 2, 3, 4)  # the simulator: one block a row
    c = shape[-1]
    gradcheck_on(backend_name,
                 lambda x, w, b: F.layer_norm(x, w, b, eps=1e-3, channels_last=True),
                 randn(*shape), randn(c, seed=1), randn(c, seed=2))


@pytest.mark.parametrize("other", NOT_REFERENCE)
def test_layer_norm_channels_last_backends_agree(other):
    x, w, b = randn(2, 2, 3), randn(3, seed=1), randn(3, seed=2)

    def fn(x, w, b):
        return F.layer_norm(x, w, b, channels_last=True)

    ref_out, ref_grads = run("reference", fn, x, w, b)
    out, grads = run(other, fn, x, w, b)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for a, r in zip(grads, ref_grads):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


def test_layer_norm_channels_last_matches_torch_layer_norm():
    torch = torch_or_skip()
    x, w, b = randn(2, 3, 3, 6, scale=2.0), randn(6, seed=1), randn(6, seed=2)
    g = randn(2, 3, 3, 6, seed=3)
    module = nn.LayerNorm(6, eps=1e-6, channels_last=True, dtype=np.float64)
    module.weight.data[...] = w
    module.bias.data[...] = b
    t = Tensor(x, requires_grad=True)
    out = module(t)
    (out * Tensor(g)).sum().backward()
    reference = torch.nn.LayerNorm(6, eps=1e-6, dtype=torch.float64)
    reference.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in module.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    out_t = reference(xt)
    (out_t * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(module.weight.grad.numpy(), reference.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(module.bias.grad.numpy(), reference.bias.grad.numpy(), rtol=1e-10)


def test_layer_norm_module_channels_last():
    module = nn.LayerNorm(4, channels_last=True)
    assert sorted(module.state_dict()) == ["bias", "weight"]
    assert repr(module) == "LayerNorm(4, eps=1e-05, affine=True, channels_last=True)"
    assert repr(nn.LayerNorm(4)) == "LayerNorm(4, eps=1e-05, affine=True)"
    assert module(Tensor(randn(2, 3, 4), dtype=np.float32)).shape == (2, 3, 4)
    assert module(Tensor(randn(0, 4), dtype=np.float32)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"LayerNorm: expected channels-last input \(\*, 4\) "
                                         r"with 4 channels on the last axis, got shape \(2, 4, 3\)"):
        module(Tensor(randn(2, 4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="LayerNorm: channels_last must be a bool, got str 'yes'"):
        nn.LayerNorm(4, channels_last="yes")


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.layer_norm(Tensor(randn(2, 3)), Tensor(np.ones(2)), channels_last=True), ValueError,
     r"layer_norm: weight must have shape \(C,\) = \(3,\) for channels-last input of shape "
     r"\(2, 3\), got \(2,\)"),
    (lambda: F.layer_norm(Tensor(randn(2, 3)), None, Tensor(np.ones((3, 1))), channels_last=True),
     ValueError, r"layer_norm: bias must have shape \(C,\) = \(3,\)"),
    (lambda: F.layer_norm(Tensor(1.0), channels_last=True), ValueError,
     "layer_norm: with channels_last=True input must be"),
    (lambda: F.layer_norm(Tensor(randn(2, 3)), channels_last=1), TypeError,
     "layer_norm: channels_last must be a bool, got int 1"),
    (lambda: F.layer_norm(Tensor(randn(2, 3)), eps=0.0, channels_last=True), ValueError,
     "layer_norm: eps must be a finite number > 0"),
    (lambda: F.layer_norm(Tensor(randn(2, 3)), Tensor(np.ones(3), dtype=np.float32),
                          channels_last=True), TypeError,
     "layer_norm: all tensors must have one dtype"),
])
def test_layer_norm_channels_last_refuses_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------- linear, (N, H, W, C)
def test_linear_on_channels_last_maps_the_last_axis(backend_name):
    """nn.Linear on (N, H, W, C): the same matrix at every position (a 1x1 convolution)."""
    x, w, b = randn(2, 2, 3, 4), randn(5, 4, seed=1), randn(5, seed=2)
    out, _ = run(backend_name, F.linear, x, w, b)
    np.testing.assert_allclose(out, np.einsum("nhwc,oc->nhwo", x, w) + b, rtol=1e-12)
    gradcheck_on(backend_name, F.linear, x, w, b)
