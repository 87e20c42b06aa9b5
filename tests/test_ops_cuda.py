"""The general differentiable ops on device tensors.

minidcn.functional writes add, sum, matmul, log_softmax ... once, as NumPy code; on a cuda
tensor that code runs on CudaArrays.  For every op, on tiny float64 inputs:

* forward and backward on "cuda" (the simulator) match the host to 1e-12;
* the output and every gradient stay on the device, and nothing is copied to the host
  on the way (``CudaArray.to_host`` is disabled while the op and its backward run);
* ``minidcn.gradcheck`` passes on the device.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import minidcn.functional as F
from helpers import gradcheck_on, host, tensors
from minidcn import Tensor
from minidcn.device.array import CudaArray
from test_cuda_array import small_grid  # noqa: F401  (autouse: small kernel grids)

pytestmark = pytest.mark.cuda


def uniform(seed, shape, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def away_from_zero(seed, shape):
    """Values in ±[0.3, 2]: no kinks (relu) and no tiny divisors."""
    x = uniform(seed, shape, 0.3, 2.0)
    return x * np.where(uniform(seed + 1, shape) > 0, 1.0, -1.0)


def positive(seed, shape):
    return uniform(seed, shape, 0.5, 2.0)


# (function of the input tensors, input arrays); every array becomes a float64 leaf
CASES = {
    "add broadcast": (F.add, [uniform(0, (2, 3)), uniform(1, (3,))]),
    "add scalar": (lambda a: 1.5 + a + 2, [uniform(2, (2, 2))]),
    "sub broadcast": (F.sub, [uniform(3, (2, 1)), uniform(4, (1, 3))]),
    "sub scalar": (lambda a: 2.0 - a, [uniform(5, (3,))]),
    "mul broadcast": (F.mul, [uniform(6, (2, 3)), uniform(7, (2, 1))]),
    "div broadcast": (F.div, [uniform(8, (2, 3)), away_from_zero(9, (3,))]),
    "div scalar": (lambda a: 3.0 / a, [away_from_zero(10, (2, 2))]),
    "neg": (F.neg, [uniform(11, (2, 3))]),
    "pow": (F.pow, [positive(12, (2, 2)), uniform(13, (2,))]),
    "pow scalar": (lambda a: a ** 3.0, [uniform(14, (2, 2))]),
    "exp": (F.exp, [uniform(15, (2, 3))]),
    "log": (F.log, [positive(16, (2, 3))]),
    "sum all": (F.sum, [uniform(17, (2, 3))]),
    "sum axis keepdim": (lambda a: F.sum(a, 1, keepdim=True), [uniform(18, (2, 3))]),
    "sum two axes": (lambda a: F.sum(a, (0, 2)), [uniform(19, (2, 2, 2))]),
    "mean all": (F.mean, [uniform(20, (2, 3))]),
    "mean last axis": (lambda a: F.mean(a, -1), [uniform(21, (2, 3))]),
    "reshape": (lambda a: F.reshape(a, (3, -1)), [uniform(22, (2, 3))]),
    "permute": (lambda a: F.permute(a, (2, 0, 1)), [uniform(23, (2, 3, 2))]),
    "transpose": (lambda a: F.transpose(a, 0, 1), [uniform(24, (2, 3))]),
    "getitem slices": (lambda a: a[1:, ::-1], [uniform(25, (3, 3))]),
    "getitem none int": (lambda a: a[None, 0, ..., 1], [uniform(26, (2, 3, 2))]),
    "getitem to 0-d": (lambda a: a[1, -1] * a[0, 0], [uniform(56, (2, 2))]),
    "sum of 0-d": (lambda a: F.sum(F.exp(a), 0), [np.array(0.7)]),
    "getitem repeats": (lambda a: a[[0, 2, 0], 1:], [uniform(27, (3, 2))]),
    "getitem tensor index": (lambda a: a[Tensor([1.0, 1.0, 0.0])], [uniform(28, (2, 2))]),
    "cat dim 0": (lambda a, b: F.cat([a, b]), [uniform(57, (2, 3)), uniform(58, (1, 3))]),
    "cat last dim": (lambda a, b: F.cat((a, b), -1),
                     [uniform(59, (2, 2, 1)), uniform(60, (2, 2, 3))]),
    "matmul 2d": (F.matmul, [uniform(29, (2, 3)), uniform(30, (3, 2))]),
    "matmul batched broadcast": (F.matmul, [uniform(31, (2, 1, 2, 2)), uniform(32, (3, 2, 2))]),
    "matmul 1d @ 2d": (F.matmul, [uniform(33, (3,)), uniform(34, (3, 2))]),
    "matmul 2d @ 1d": (F.matmul, [uniform(35, (2, 3)), uniform(36, (3,))]),
    "matmul 1d @ 1d": (F.matmul, [uniform(37, (3,)), uniform(38, (3,))]),
    "linear": (F.linear, [uniform(39, (2, 3)), uniform(40, (2, 3)), uniform(41, (2,))]),
    "linear no bias": (F.linear, [uniform(42, (2, 2)), uniform(43, (3, 2))]),
    "relu": (F.relu, [away_from_zero(44, (2, 3))]),
    "sigmoid": (F.sigmoid, [uniform(45, (2, 3), -4, 4)]),
    "tanh": (F.tanh, [uniform(46, (2, 3))]),
    "log_softmax dim 1": (lambda a: F.log_softmax(a, 1), [uniform(47, (2, 3))]),
    "log_softmax dim 0": (lambda a: F.log_softmax(a, 0), [uniform(48, (3, 2))]),
    "softmax dim 1": (lambda a: F.softmax(a, 1), [uniform(57, (2, 3))]),
    "softmax dim 0": (lambda a: F.softmax(a, 0), [uniform(58, (3, 2))]),
    "linear channels_last": (F.linear, [uniform(59, (1, 2, 2, 3)), uniform(60, (2, 3)), uniform(61, (2,))]),
    "cross_entropy mean": (lambda a: F.cross_entropy(a, [2, 0]), [uniform(49, (2, 3))]),
    "cross_entropy spatial sum": (
        lambda a: F.cross_entropy(a, np.array([[1, 0], [0, 1]]), reduction="sum"),
        [uniform(50, (2, 2, 2))],
    ),
}


def forward_backward(device, fn, arrays, dtype=np.float64):
    """Run ``fn`` and its backward (a fixed random output gradient) on ``device``.

    On "cuda", ``CudaArray.to_host`` raises while they run: the op must stay on the
    device.  Returns the output and the input leaves.
    """
    leaves = [Tensor(a, dtype=dtype).to(device).detach().requires_grad_() for a in arrays]
    with pytest.MonkeyPatch.context() as guard:
        if device == "cuda":
            guard.setattr(CudaArray, "to_host", _no_host_copy)
        out = fn(*leaves)
        seed = np.random.default_rng(0).standard_normal(out.shape)
        out.backward(Tensor(seed, dtype=out.dtype).to(device))
    return out, leaves


def _no_host_copy(self):
    raise AssertionError("a device array was copied to the host during the op")


def assert_matches_host(fn, arrays, dtype=np.float64, tol=1e-12):
    out_h, leaves_h = forward_backward("cpu", fn, arrays, dtype)
    out_d, leaves_d = forward_backward("cuda", fn, arrays, dtype)
    assert out_d.device == "cuda" and out_d.dtype == out_h.dtype and out_d.shape == out_h.shape
    np.testing.assert_allclose(host(out_d), host(out_h), rtol=tol, atol=tol)
    for t_d, t_h in zip(leaves_d, leaves_h):
        assert t_d.grad.device == "cuda" and t_d.grad.dtype == t_h.grad.dtype
        np.testing.assert_allclose(host(t_d.grad), host(t_h.grad), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES)
def test_op_on_cuda_matches_the_host_and_stays_on_the_device(case):
    fn, arrays = CASES[case]
    assert_matches_host(fn, arrays)


@pytest.mark.parametrize("case", CASES)
def test_op_on_cuda_passes_gradcheck(case):
    fn, arrays = CASES[case]
    gradcheck_on("cuda", fn, *arrays)


@settings(max_examples=6)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=2),
       op=st.sampled_from([F.add, F.sub, F.mul, F.div]), seed=st.integers(0, 2**16))
def test_broadcast_arithmetic_on_cuda_matches_the_host(shapes, op, seed):
    a, b = (away_from_zero(seed + k, s) for k, s in enumerate(shapes.input_shapes))
    assert_matches_host(op, [a, b])


def test_cast_and_float32_ops_match_the_host():
    """cast cannot be gradchecked (float32 rounding swamps a finite difference), so its
    forward and backward are compared with the host, and the dtypes checked."""
    def fn(x, w):
        return F.sum(F.cast(x, np.float32) * F.cast(w, np.float32)).double()

    assert_matches_host(fn, [uniform(51, (2, 3)), uniform(52, (3,))])
    assert_matches_host(lambda a, b: F.log_softmax(a * b, 1),
                        [uniform(53, (2, 3)), uniform(54, (3,))], dtype=np.float32, tol=1e-6)


# ---------------------------------------------------------------------------- device rules


def test_mixing_devices_in_one_op_is_a_value_error():
    a, b = tensors("cpu", np.ones(2), np.ones(2))
    mixed = r"Add: expected all tensors on one device, got \['cpu', 'cuda'\]"
    with pytest.raises(ValueError, match=mixed):
        a + b.to("cuda")
    with pytest.raises(ValueError, match="MatMul: expected all tensors on one device"):
        F.matmul(a.to("cuda"), b)


def test_device_data_never_becomes_a_numpy_array_implicitly():
    (t,) = tensors("cuda", np.ones((2, 2)))
    with pytest.raises(TypeError, match="copy explicitly with .to_host"):
        np.asarray(t.data)
    with pytest.raises(TypeError, match=r"tensor is on 'cuda'; call .to\('cpu'\) first"):
        t.numpy()


def test_cuda_round_trip_is_differentiable():
    x = uniform(55, (2, 3))

    def round_trip(a):
        return F.tanh((a.to("cuda") * 2.0).to("cpu"))

    (leaf,) = tensors("cpu", x, requires_grad=True)
    out = round_trip(leaf)
    out.backward(np.ones(x.shape))
    assert leaf.grad.device == "cpu"
    np.testing.assert_allclose(leaf.grad.numpy(), 2.0 / np.cosh(2.0 * x) ** 2, rtol=1e-12)
    gradcheck_on("numba", round_trip, x)
