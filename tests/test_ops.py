"""The general differentiable ops: forward against NumPy (and torch when installed),
backward by finite differences, and errors for bad input.

On the host these ops are NumPy under both backends, so one host run covers them; the cuda
versions are tested with the device array kernels.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import minidcn
import minidcn.functional as F
from minidcn import Tensor

# ---------------------------------------------------------------------------- helpers


def arrays(draw_seed, shape, low=-2.0, high=2.0, away_from=None):
    """float64 values in [low, high] at least 0.05 away from ``away_from`` (a kink)."""
    rng = np.random.default_rng(draw_seed)
    x = rng.uniform(low, high, size=shape)
    if away_from is not None:
        near = np.abs(x - away_from) < 0.05
        x[near] = away_from + np.where(x[near] >= away_from, 0.05, -0.05)
    return x


def leaf(x):
    return Tensor(np.asarray(x, dtype=np.float64), requires_grad=True)


def torch_or_skip():
    return pytest.importorskip("torch")


def torch_grads(torch, fn, *arrays_):
    """Output and input gradients of ``fn`` in torch for a fixed output gradient."""
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays_]
    out = fn(*ts)
    g = np.random.default_rng(1).standard_normal(tuple(out.shape))
    out.backward(torch.tensor(g))
    return out.detach().numpy(), [t.grad.numpy() for t in ts], g


def our_grads(fn, g, *arrays_):
    ts = [leaf(a) for a in arrays_]
    out = fn(*ts)
    out.backward(g)
    return out.numpy(), [t.grad.numpy() for t in ts]


seeds = st.integers(0, 2**32 - 1)
two_shapes = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)

BINARY = {
    "add": (F.add, np.add, {}),
    "sub": (F.sub, np.subtract, {}),
    "mul": (F.mul, np.multiply, {}),
    "div": (F.div, np.divide, {"b_low": 0.5}),
    "pow": (F.pow, np.power, {"a_low": 0.5}),
}

# ---------------------------------------------------------------------------- elementwise


@pytest.mark.parametrize("name", list(BINARY))
@given(shapes=two_shapes, seed=seeds)
def test_binary_ops_broadcast_forward_and_gradcheck(name, shapes, seed):
    ours, theirs, ranges = BINARY[name]
    sa, sb = shapes.input_shapes
    a = arrays(seed, sa, low=ranges.get("a_low", -2.0))
    b = arrays(seed + 1, sb, low=ranges.get("b_low", -2.0))
    out = ours(leaf(a), leaf(b))
    assert out.shape == np.broadcast_shapes(sa, sb)
    np.testing.assert_allclose(out.numpy(), theirs(a, b), rtol=1e-14)
    assert minidcn.gradcheck(ours, [leaf(a), leaf(b)])


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_ops_match_torch(name):
    torch = torch_or_skip()
    ours, _, ranges = BINARY[name]
    a = arrays(3, (2, 1, 3), low=ranges.get("a_low", -2.0))
    b = arrays(4, (4, 1), low=max(ranges.get("b_low", -2.0), 0.5))
    t_fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
            "pow": torch.pow}[name]
    t_out, t_grads, g = torch_grads(torch, t_fn, a, b)
    out, grads = our_grads(ours, g, a, b)
    np.testing.assert_allclose(out, t_out, rtol=1e-13, atol=1e-14)
    for mine, theirs in zip(grads, t_grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-13)


def test_operators_and_python_constants():
    a = leaf([1.0, 2.0, 4.0])
    out = 1 - (2 * a + 1) / a ** 2 + (-a) * 3 - 2 ** a
    expected = 1 - (2 * a.numpy() + 1) / a.numpy() ** 2 - 3 * a.numpy() - 2 ** a.numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-14)
    assert minidcn.gradcheck(lambda t: 1 - (2 * t + 1) / t ** 2 + (-t) * 3 - 2 ** t, [a])


def test_a_constant_takes_the_tensor_dtype():
    a = Tensor([1.0, 2.0])  # float32
    assert (a + 1.5).dtype == np.float32
    assert (np.float64(2.0) * a).dtype == np.float32
    assert (a / np.ones(2)).dtype == np.float32


UNARY = {
    "neg": (F.neg, np.negative, None, -2.0),
    "exp": (F.exp, np.exp, None, -2.0),
    "log": (F.log, np.log, None, 0.2),
    "relu": (F.relu, lambda x: np.maximum(x, 0), 0.0, -2.0),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), None, -2.0),
    "tanh": (F.tanh, np.tanh, None, -2.0),
}


@pytest.mark.parametrize("name", list(UNARY))
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=4), seed=seeds)
def test_unary_ops_forward_and_gradcheck(name, shape, seed):
    ours, theirs, kink, low = UNARY[name]
    x = arrays(seed, shape, low=low, away_from=kink)
    np.testing.assert_allclose(ours(leaf(x)).numpy(), theirs(x), rtol=1e-14, atol=1e-15)
    assert minidcn.gradcheck(ours, [leaf(x)])


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_ops_match_torch(name):
    torch = torch_or_skip()
    ours, _, kink, low = UNARY[name]
    x = arrays(5, (3, 4), low=low, away_from=kink)
    t_fn = {"neg": torch.neg, "exp": torch.exp, "log": torch.log, "relu": torch.relu,
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]
    t_out, (t_grad,), g = torch_grads(torch, t_fn, x)
    out, (grad,) = our_grads(ours, g, x)
    np.testing.assert_allclose(out, t_out, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-13, atol=1e-15)


def test_relu_gradient_at_zero_is_zero_like_torch():
    x = leaf([-1.0, 0.0, 2.0])
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0])


def test_sigmoid_does_not_overflow():
    with np.errstate(all="raise"):
        out = F.sigmoid(Tensor(np.array([-1000.0, 0.0, 1000.0]))).numpy()
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


def test_cast_changes_dtype_and_casts_the_gradient_back():
    a = Tensor([1.0, 2.0], requires_grad=True)  # float32
    b = F.cast(a, np.float64)
    assert b.dtype == np.float64
    (b * b).sum().backward()
    assert a.grad.dtype == np.float32
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 4.0])
    assert F.cast(a, np.float32) is a
    with pytest.raises(TypeError, match="cast: dtype must be float32 or float64, got int32"):
        F.cast(a, np.int32)


# ---------------------------------------------------------------------------- reductions


@st.composite
def shape_and_dims(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=3))
    dims = draw(st.one_of(
        st.none(),
        st.integers(-len(shape), len(shape) - 1),
        st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1).map(tuple),
    ))
    return shape, dims, draw(st.booleans())


@pytest.mark.parametrize("name", ["sum", "mean"])
@given(case=shape_and_dims(), seed=seeds)
def test_sum_and_mean_forward_and_gradcheck(name, case, seed):
    shape, dims, keepdim = case
    ours, theirs = (F.sum, np.sum) if name == "sum" else (F.mean, np.mean)
    x = arrays(seed, shape)
    out = ours(leaf(x), dims, keepdim)
    np.testing.assert_allclose(out.numpy(), theirs(x, axis=dims, keepdims=keepdim), rtol=1e-13)
    assert minidcn.gradcheck(lambda t: ours(t, dims, keepdim), [leaf(x)])


def test_sum_and_mean_match_torch():
    torch = torch_or_skip()
    x = arrays(6, (2, 3, 4))
    for ours, t_fn in ((F.sum, torch.sum), (F.mean, torch.mean)):
        t_out, (t_grad,), g = torch_grads(torch, lambda t: t_fn(t, (0, 2), keepdim=True), x)
        out, (grad,) = our_grads(lambda t: ours(t, (0, 2), keepdim=True), g, x)
        np.testing.assert_allclose(out, t_out, rtol=1e-13)
        np.testing.assert_allclose(grad, t_grad, rtol=1e-13)


def test_tensor_methods_for_reductions():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    assert x.sum().item() == 15.0
    np.testing.assert_array_equal(x.mean(dim=0).numpy(), [1.5, 2.5, 3.5])
    assert x.sum(dim=-1, keepdim=True).shape == (2, 1)
    assert F.sum(Tensor(2.0), 0).item() == 2.0  # a 0-d tensor accepts dim 0, as in torch


@pytest.mark.parametrize("call, error, piece", [
    (lambda x: F.sum(x, 3), ValueError, "sum: dim 3 is out of range for a 2-D tensor"),
    (lambda x: F.mean(x, (0, 0)), ValueError, "mean: dim (0, 0) repeats an axis"),
    (lambda x: F.sum(x, 1.0), TypeError, "sum: dim must be an int or a tuple of ints, got 1.0"),
    (lambda x: F.sum(x, (0, 1.0)), TypeError, "sum: dim must be ints, got 1.0"),
    (lambda x: F.mean(Tensor(np.zeros((0, 2))), 0), ValueError, "mean: reducing over an empty"),
])
def test_reduction_errors(call, error, piece):
    with pytest.raises(error, match=pytest_escape(piece)):
        call(Tensor(np.zeros((2, 3))))


def pytest_escape(text):
    import re

    return re.escape(text)


# ---------------------------------------------------------------------------- shape ops


@given(shape=array_shapes(min_dims=1, max_dims=4, max_side=3), seed=seeds, data=st.data())
def test_reshape_and_permute_gradcheck(shape, seed, data):
    x = arrays(seed, shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    out = F.permute(leaf(x), perm)
    np.testing.assert_array_equal(out.numpy(), x.transpose(perm))
    assert minidcn.gradcheck(lambda t: F.permute(t, perm), [leaf(x)])
    flat = F.reshape(leaf(x), (-1,))
    np.testing.assert_array_equal(flat.numpy(), x.reshape(-1))
    assert minidcn.gradcheck(lambda t: F.reshape(t, (1, -1) + shape[:0]), [leaf(x)])


@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=3), seed=seeds, data=st.data())
def test_cat_joins_like_numpy_and_passes_gradcheck(shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    parts = [arrays(seed + i, shape[:dim % len(shape)] + (n,) + shape[dim % len(shape) + 1:])
             for i, n in enumerate(sizes)]
    np.testing.assert_array_equal(F.cat([leaf(p) for p in parts], dim).numpy(),
                                  np.concatenate(parts, axis=dim))
    assert minidcn.gradcheck(lambda *ts: F.cat(list(ts), dim) ** 2, [leaf(p) for p in parts])


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.cat(Tensor(np.ones((2, 2)))), TypeError, "cat: tensors must be a list or tuple"),
    (lambda: F.cat([]), ValueError, "cat: tensors must hold at least one tensor"),
    (lambda: F.cat([np.ones(2)], dim=1), ValueError, "cat: dim=1 is out of range"),
    (lambda: F.cat([np.ones(2)], dim=0.0), TypeError, "cat: dim must be an int, got float"),
    (lambda: F.cat([np.ones((2, 3)), np.ones((2, 4))]), ValueError,
     r"cat: tensors\[1\] has shape \(2, 4\), expected tensors\[0\]'s shape \(2, 3\) except "
     "along dim 0"),
    (lambda: F.cat([np.ones(2, np.float32), np.ones(2)]), TypeError,
     r"cat: tensors\[1\] has dtype float64, expected tensors\[0\]'s float32"),
    (lambda: F.cat([np.ones(2), "a"]), TypeError, r"cat: tensors\[1\] must be a Tensor"),
])
def test_cat_refuses_bad_input_by_name(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_transpose_and_the_T_property():
    x = arrays(7, (2, 3, 4))
    np.testing.assert_array_equal(F.transpose(leaf(x), 0, 2).numpy(), x.swapaxes(0, 2))
    np.testing.assert_array_equal(leaf(x).T.numpy(), x.T)
    np.testing.assert_array_equal(leaf(x).transpose(-1, 0).numpy(), x.swapaxes(-1, 0))
    assert minidcn.gradcheck(lambda t: F.transpose(t, 1, -1) * 2, [leaf(x)])


def test_flatten_and_view_spellings():
    x = leaf(arrays(8, (2, 3, 2)))
    assert F.flatten(x).shape == (2, 6)
    assert F.flatten(x, 0).shape == (12,)
    assert x.reshape(3, 4).shape == (3, 4) and x.view((4, 3)).shape == (4, 3)
    assert F.reshape(x, 12).shape == (12,)
    assert x.permute(2, 0, 1).shape == (2, 2, 3)


@pytest.mark.parametrize("index", [
    1, -1, slice(None, None, 2), (slice(None), 0), (Ellipsis, 1), (None, 0),
    [0, 0, 1],  # repeated fancy indices: their gradients add up
    (np.array([1, 1, 0]), np.array([2, 2, 0])),
    np.array([[True, False, True], [False, True, True]]),
])
def test_getitem_forward_and_gradcheck(index):
    x = arrays(9, (2, 3))
    np.testing.assert_array_equal(leaf(x)[index].numpy(), x[index])
    assert minidcn.gradcheck(lambda t: t[index], [leaf(x)])


def test_getitem_repeated_indices_accumulate():
    x = leaf([1.0, 2.0, 3.0])
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0])


def test_getitem_with_a_tensor_index():
    x = leaf([10.0, 20.0, 30.0])
    np.testing.assert_array_equal(x[Tensor([2.0, 0.0])].numpy(), [30.0, 10.0])
    with pytest.raises(TypeError, match="whole numbers"):
        x[Tensor([0.5])]


def test_shape_ops_match_torch():
    torch = torch_or_skip()
    x = arrays(10, (2, 3, 4))
    cases = [
        (lambda t: t.reshape(4, 6), lambda t: F.reshape(t, (4, 6))),
        (lambda t: t.permute(2, 0, 1), lambda t: F.permute(t, (2, 0, 1))),
        (lambda t: t.transpose(0, 2), lambda t: F.transpose(t, 0, 2)),
        (lambda t: t[:, [0, 0, 2], 1:], lambda t: t[:, [0, 0, 2], 1:]),
    ]
    for t_fn, ours in cases:
        t_out, (t_grad,), g = torch_grads(torch, t_fn, x)
        out, (grad,) = our_grads(ours, g, x)
        np.testing.assert_array_equal(out, t_out)
        np.testing.assert_allclose(grad, t_grad, rtol=1e-15)


@pytest.mark.parametrize("call, error, piece", [
    (lambda x: F.reshape(x, (4, 2)), ValueError, "reshape: cannot view 6 elements (2, 3)"),
    (lambda x: F.reshape(x, (-1, -1)), ValueError, "at most one -1"),
    (lambda x: F.reshape(x, (2.0, 3)), TypeError, "reshape: shape must be ints"),
    (lambda x: F.permute(x, (0, 0)), ValueError, "permute: dims (0, 0) is not a permutation"),
    (lambda x: F.permute(x, (0, 5)), ValueError, "permute: dims (0, 5) is not a permutation"),
    (lambda x: F.transpose(x, 0, 2), ValueError, "transpose: dim1=2 is out of range"),
    (lambda x: F.flatten(x, 2), ValueError, "flatten: start_dim=2 is out of range"),
    (lambda x: x[5], ValueError, "getitem: index 5 does not fit shape (2, 3)"),
    (lambda x: x[0, 0, 0], ValueError, "does not fit shape (2, 3)"),
    (lambda x: x["a"], ValueError, "getitem: index 'a' does not fit"),
])
def test_shape_op_errors(call, error, piece):
    with pytest.raises(error, match=pytest_escape(piece)):
        call(Tensor(np.zeros((2, 3))))


# ---------------------------------------------------------------------------- matmul, linear

MATMUL_SHAPES = [
    ((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4)),
    ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)), ((2, 1, 2, 3), (4, 3, 2)), ((1, 2, 3), (5, 3, 1)),
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_forward_and_gradcheck(sa, sb):
    a, b = arrays(11, sa), arrays(12, sb)
    out = F.matmul(leaf(a), leaf(b))
    np.testing.assert_allclose(out.numpy(), np.matmul(a, b), rtol=1e-13)
    assert minidcn.gradcheck(F.matmul, [leaf(a), leaf(b)])
    assert (leaf(a) @ leaf(b)).shape == np.matmul(a, b).shape


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_matches_torch(sa, sb):
    torch = torch_or_skip()
    a, b = arrays(13, sa), arrays(14, sb)
    t_out, t_grads, g = torch_grads(torch, torch.matmul, a, b)
    out, grads = our_grads(F.matmul, g, a, b)
    np.testing.assert_allclose(out, t_out, rtol=1e-13)
    for mine, theirs in zip(grads, t_grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-14)


@given(batch=array_shapes(min_dims=0, max_dims=2, max_side=3), k=st.integers(1, 4),
       n=st.integers(1, 3), bias=st.booleans(), seed=seeds)
def test_linear_forward_and_gradcheck(batch, k, n, bias, seed):
    x, w, b = arrays(seed, batch + (k,)), arrays(seed + 1, (n, k)), arrays(seed + 2, (n,))
    expected = x @ w.T + (b if bias else 0)
    inputs = [leaf(x), leaf(w)] + ([leaf(b)] if bias else [])
    np.testing.assert_allclose(F.linear(*inputs).numpy(), expected, rtol=1e-13, atol=1e-15)
    assert minidcn.gradcheck(F.linear, inputs)


def test_linear_weight_given_as_an_array_takes_the_input_dtype():
    x = Tensor(np.ones((2, 3)), dtype=np.float32)
    w = np.arange(12).reshape(4, 3)  # int64, as a constant operand of mul would be taken
    y = F.linear(x, w, bias=[1, 2, 3, 4])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), np.ones((2, 3)) @ w.T + [1, 2, 3, 4])


def test_linear_matches_torch():
    torch = torch_or_skip()
    x, w, b = arrays(15, (4, 3)), arrays(16, (2, 3)), arrays(17, (2,))
    t_out, t_grads, g = torch_grads(torch, torch.nn.functional.linear, x, w, b)
    out, grads = our_grads(F.linear, g, x, w, b)
    np.testing.assert_allclose(out, t_out, rtol=1e-13)
    for mine, theirs in zip(grads, t_grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-13)


@pytest.mark.parametrize("call, error, piece", [
    (lambda: F.matmul(Tensor(1.0), Tensor([1.0])), ValueError, "matmul: operands must be at least 1-D"),
    (lambda: F.matmul(Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 3)))), ValueError,
     "matmul: inner sizes differ: input (2, 3) has 3 columns, other (2, 3) has 2 rows"),
    (lambda: F.matmul(Tensor(np.zeros((2, 1, 3))), Tensor(np.zeros((3, 3, 1)))), ValueError,
     "matmul: batch shapes (2,) and (3,) do not broadcast"),
    (lambda: F.matmul(Tensor(np.zeros((2, 2))), Tensor(np.zeros((2, 2), np.float32))), TypeError,
     "matmul: all tensors must have one dtype"),
    (lambda: F.matmul(Tensor(np.zeros(2)), "x"), TypeError, "matmul: other must be a Tensor"),
    (lambda: F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros(3))), ValueError,
     "linear: weight must be 2-D"),
    (lambda: F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 2)))), ValueError,
     "linear: input's last axis must be in_features=2, got shape (2, 3)"),
    (lambda: F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 3))), Tensor(np.zeros(3))),
     ValueError, "linear: bias must have shape (4,), got (3,)"),
    (lambda: F.linear(Tensor(np.zeros((2, 3)), dtype=np.float32),
                      Tensor(np.zeros((4, 3)), dtype=np.float64)),
     TypeError, "linear: all tensors must have one dtype, got input float32, weight float64"),
    (lambda: F.linear(Tensor(np.zeros((2, 3)), dtype=np.float32), np.zeros((4, 3)),
                      Tensor(np.zeros(4), dtype=np.float64)),
     TypeError, "weight float32, bias float64"),
])
def test_matmul_and_linear_errors(call, error, piece):
    with pytest.raises(error, match=pytest_escape(piece)):
        call()


# ---------------------------------------------------------------------------- softmax, loss


@given(shape=array_shapes(min_dims=1, max_dims=3, max_side=4), seed=seeds, data=st.data())
def test_log_softmax_forward_and_gradcheck(shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = arrays(seed, shape, low=-5.0, high=5.0)
    shifted = x - x.max(axis=dim, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
    np.testing.assert_allclose(F.log_softmax(leaf(x), dim).numpy(), expected, rtol=1e-13, atol=1e-14)
    assert minidcn.gradcheck(lambda t: F.log_softmax(t, dim), [leaf(x)])


def test_log_softmax_is_stable_for_large_inputs():
    out = F.log_softmax(Tensor(np.array([[1000.0, 0.0], [-1000.0, -1000.0]])), 1).numpy()
    np.testing.assert_allclose(out, [[0.0, -1000.0], [np.log(0.5), np.log(0.5)]])


def scores_and_labels(shape):
    x = arrays(18, shape, low=-3.0, high=3.0)
    return x, np.random.default_rng(19).integers(0, shape[1], size=(shape[0],) + shape[2:])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_cross_entropy_gradcheck(reduction, shape):
    x, labels = scores_and_labels(shape)
    assert minidcn.gradcheck(lambda t: F.cross_entropy(t, labels, reduction=reduction), [leaf(x)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_cross_entropy_matches_torch(reduction, shape):
    torch = torch_or_skip()
    x, labels = scores_and_labels(shape)
    tx = torch.tensor(x, requires_grad=True)
    t_out = torch.nn.functional.cross_entropy(tx, torch.tensor(labels), reduction=reduction)
    t_out.sum().backward()
    ours = leaf(x)
    out = F.cross_entropy(ours, Tensor(labels), reduction=reduction)
    out.sum().backward()
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(ours.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_by_hand():
    x = Tensor(np.log(np.array([[1.0, 1.0, 2.0]])))  # softmax = (1/4, 1/4, 1/2)
    assert F.cross_entropy(x, [2]).item() == pytest.approx(np.log(2.0), rel=1e-7)
    assert F.cross_entropy(x, np.array([0])).item() == pytest.approx(np.log(4.0), rel=1e-7)


@pytest.mark.parametrize("call, error, piece", [
    (lambda: F.log_softmax(Tensor(1.0), 0), ValueError, "log_softmax: input must be at least 1-D"),
    (lambda: F.log_softmax(Tensor(np.zeros((2, 3))), 2), ValueError, "log_softmax: dim 2 is out of range"),
    (lambda: F.log_softmax(Tensor(np.zeros((2, 3))), None), TypeError, "log_softmax: dim must be one int"),
    (lambda: F.cross_entropy(Tensor(np.zeros(3)), [0]), ValueError, "cross_entropy: input must be (N, C, ...)"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 3))), [0]), ValueError,
     "cross_entropy: target must have shape (2,), got (1,)"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 3))), [0, 3]), ValueError,
     "cross_entropy: target values must lie in [0, 3), got range [0, 3]"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 3))), [0.5, 1]), TypeError,
     "cross_entropy: target must hold whole class indices"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 3))), ["a", "b"]), TypeError,
     "cross_entropy: target must be integer class indices"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 3))), [0, 1], reduction="max"), ValueError,
     "cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'max'"),
])
def test_softmax_and_loss_errors(call, error, piece):
    with pytest.raises(error, match=pytest_escape(piece)):
        call()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div, F.pow])
def test_binary_ops_reject_shapes_that_do_not_broadcast(op):
    name = op.__name__
    with pytest.raises(ValueError, match=pytest_escape(f"{name}: operand shapes (2, 3) and (4,) do not broadcast")):
        op(Tensor(np.ones((2, 3))), Tensor(np.ones(4)))


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div, F.pow])
def test_binary_ops_reject_non_numeric_operands(op):
    name = op.__name__
    with pytest.raises(TypeError, match=f"{name}: second operand must be a Tensor or array-like, got str"):
        op(Tensor([1.0]), "x")
    with pytest.raises(TypeError, match=f"{name}: first operand Tensor: data must be numeric"):
        op(["a"], Tensor([1.0]))


@pytest.mark.parametrize("op", [F.neg, F.exp, F.log, F.relu, F.sigmoid, F.tanh, F.sum, F.mean])
def test_unary_ops_reject_non_numeric_input(op):
    with pytest.raises(TypeError, match=f"{op.__name__}: input must be a Tensor or array-like, got object"):
        op(object())
