"""The backward engine: order, reuse, accumulation, checks on the gradients it is handed."""

import weakref

import numpy as np
import pytest

import minidcn
from minidcn import Tensor
from minidcn.function import Function
from minidcn.tensor import _topological_order


def test_reuse_b_equals_a_plus_a_c_equals_b_plus_b_gives_4():
    a = Tensor(1.0, requires_grad=True)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.item() == 4.0


def test_reuse_through_a_longer_diamond():
    # L = (x*y) * (x + y): dL/dx = y(x + y) + xy, dL/dy = x(x + y) + xy.
    x = Tensor(np.float64(3.0), requires_grad=True)
    y = Tensor(np.float64(-2.0), requires_grad=True)
    (x * y * (x + y)).backward()
    assert x.grad.item() == -2.0 * 1.0 + -6.0
    assert y.grad.item() == 3.0 * 1.0 + -6.0


def test_gradients_accumulate_across_backward_calls():
    a = Tensor([1.0, 2.0], requires_grad=True)
    loss = (a * a).sum()
    loss.backward()
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 4.0])
    loss.backward()
    np.testing.assert_array_equal(a.grad.numpy(), [4.0, 8.0])
    (a * 3).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [7.0, 11.0])
    a.zero_grad()
    assert a.grad is None


def test_first_gradient_is_a_copy_not_an_alias():
    a = Tensor([1.0, 2.0], requires_grad=True)
    g = np.array([5.0, 6.0], dtype=np.float32)
    a.backward(g)
    g[0] = 100.0
    assert a.grad.numpy()[0] == 5.0


class _Recorded(Function):
    """y = 2x whose backward hands out a fresh array, a view of one, or an array in ctx."""

    handed_out = {}

    @staticmethod
    def forward(ctx, x, kind):
        ctx.kind = kind
        ctx.save_for_backward(np.full(x.shape, 2.0, x.dtype))
        return 2.0 * x

    @staticmethod
    def backward(ctx, g):
        if ctx.kind == "fresh":
            out = 2.0 * g
        elif ctx.kind == "view":
            out = (2.0 * g).reshape(-1).reshape(g.shape)
        else:  # "saved"
            out = ctx.saved[0]
        _Recorded.handed_out[ctx.kind] = weakref.ref(out)  # a strong one would be a holder
        return out


def test_a_fresh_gradient_nobody_else_holds_is_adopted_without_a_copy():
    a = Tensor([1.0, 2.0], requires_grad=True)
    _Recorded.apply(a, kind="fresh").backward(np.ones(2, np.float32))
    assert a.grad.data is _Recorded.handed_out.pop("fresh")()


def test_a_view_or_an_array_kept_in_ctx_is_copied_into_the_leaf():
    a = Tensor([1.0, 2.0], requires_grad=True)
    _Recorded.apply(a, kind="view").backward(np.ones(2, np.float32))
    assert a.grad.data is not _Recorded.handed_out.pop("view")()
    assert a.grad.data.base is None
    b = Tensor([1.0, 2.0], requires_grad=True)
    y = _Recorded.apply(b, kind="saved")
    y.backward(np.ones(2, np.float32))
    saved = y._node.ctx.saved[0]
    assert not np.shares_memory(b.grad.data, saved)
    b.grad.data[0] = 7.0  # an in-place change to the gradient leaves the graph intact
    assert saved[0] == 2.0


def test_leaves_handed_the_same_array_get_separate_gradients():
    a = Tensor([1.0, 2.0], requires_grad=True)
    b = Tensor([3.0, 4.0], requires_grad=True)
    (a + b).backward(np.ones(2, np.float32))  # Add hands its incoming gradient to both
    assert not np.shares_memory(a.grad.data, b.grad.data)
    c = Tensor([1.0, 2.0], requires_grad=True)
    d = Tensor([3.0, 4.0], requires_grad=True)
    (_Recorded.apply(c, kind="fresh") + d).sum().backward()
    (c + d).sum().backward()  # second call: accumulation makes new arrays
    assert not np.shares_memory(c.grad.data, d.grad.data)
    np.testing.assert_array_equal(c.grad.numpy(), [3.0, 3.0])
    np.testing.assert_array_equal(d.grad.numpy(), [2.0, 2.0])


def test_topological_order_puts_inputs_first():
    x = Tensor(2.0, requires_grad=True)
    y = Tensor(3.0, requires_grad=True)
    a = x * y
    b = a + x
    out = b * b
    order = _topological_order(out)
    assert order[-1] is out
    assert {id(t) for t in order} == {id(t) for t in (x, y, a, b, out)}
    pos = {id(t): i for i, t in enumerate(order)}
    for t in order:
        for p in (t._node.parents() if t._node else ()):
            assert pos[id(p)] < pos[id(t)]


def test_deep_graph_does_not_hit_the_recursion_limit():
    a = Tensor(np.float64(1.0), requires_grad=True)
    t = a
    for _ in range(5000):
        t = t * 1.0001
    t.backward()
    assert a.grad.item() == pytest.approx(1.0001**5000, rel=1e-10)


def test_no_grad_records_no_graph():
    a = Tensor([1.0], requires_grad=True)
    with minidcn.no_grad():
        assert not minidcn.is_grad_enabled()
        b = a * 2
    assert minidcn.is_grad_enabled()
    assert not b.requires_grad and b.is_leaf


def test_no_grad_as_decorator_and_nesting():
    @minidcn.no_grad()
    def double(t):
        return t * 2

    a = Tensor([1.0], requires_grad=True)
    assert not double(a).requires_grad
    with minidcn.no_grad():
        with minidcn.no_grad():
            pass
        assert not minidcn.is_grad_enabled()
    assert (a * 2).requires_grad


def test_backward_on_a_non_scalar_needs_grad():
    a = Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"single-element tensor.*shape \(2,\)"):
        (a * 2).backward()


def test_backward_with_grad_of_the_wrong_shape():
    a = Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected \(2,\)"):
        (a * 2).backward(np.ones(3))


def test_backward_with_an_explicit_grad_casts_to_the_tensor_dtype():
    a = Tensor([1.0, 2.0], requires_grad=True)
    (a * 2).backward(np.array([1.0, 0.5]))  # float64 grad for a float32 tensor
    assert a.grad.dtype == np.float32
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 1.0])


def test_backward_on_a_tensor_without_graph():
    with pytest.raises(ValueError, match="does not require grad"):
        Tensor(1.0).backward()


def _op_with_backward(name, backward):
    """A Function computing 2a whose backward is ``backward(g)`` (deliberately wrong)."""
    return type(name, (Function,), {
        "forward": staticmethod(lambda ctx, a: a * 2),
        "backward": staticmethod(lambda ctx, g: backward(g)),
    })


_WrongShape = _op_with_backward("_WrongShape", lambda g: g[:1])
_WrongDtype = _op_with_backward("_WrongDtype", lambda g: (2 * g).astype(np.float64))
_TooMany = _op_with_backward("_TooMany", lambda g: (g, g))


@pytest.mark.parametrize("fn, piece", [
    (_WrongShape, r"_WrongShape.backward produced a gradient of shape \(1,\) and dtype float32 "
                  r"for an input of shape \(3,\)"),
    (_WrongDtype, r"_WrongDtype.backward produced a gradient of shape \(3,\) and dtype float64 "
                  r"for an input of shape \(3,\) and dtype float32"),
    (_TooMany, r"_TooMany.backward returned 2 gradients for 1 inputs"),
])
def test_engine_catches_a_bad_backward(fn, piece):
    a = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=piece):
        fn.apply(a).sum().backward()


def test_gradients_into_non_leaves_are_not_stored():
    a = Tensor([1.0, 2.0], requires_grad=True)
    b = a * 3
    c = (b * b).sum()
    c.backward()
    assert b.grad is None and c.grad is None
    np.testing.assert_array_equal(a.grad.numpy(), [18.0, 36.0])


def test_inputs_that_do_not_require_grad_get_nothing():
    a = Tensor([1.0, 2.0], requires_grad=True)
    k = Tensor([5.0, 7.0])
    (a * k).sum().backward()
    assert k.grad is None
    np.testing.assert_array_equal(a.grad.numpy(), [5.0, 7.0])


def test_needs_input_grad_lets_backward_skip_work():
    seen = {}

    class Probe(Function):
        @staticmethod
        def forward(ctx, a, b):
            seen["needs"] = ctx.needs_input_grad
            return a * b

        @staticmethod
        def backward(ctx, g):
            return g, None

    a = Tensor([1.0], requires_grad=True)
    Probe.apply(a, Tensor([2.0])).sum().backward()
    assert seen["needs"] == (True, False)
    assert a.grad.numpy()[0] == 1.0


def test_a_leaf_can_call_backward_on_itself():
    a = Tensor([1.0, 2.0], requires_grad=True)
    a.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 4.0])
