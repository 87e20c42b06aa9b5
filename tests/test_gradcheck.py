"""minidcn.gradcheck: passes right gradients, catches wrong ones, and says where."""

import re

import numpy as np
import pytest

import minidcn
from minidcn import GradcheckError, Tensor
from minidcn.function import Function


def leaf(shape, seed=0):
    x = np.random.default_rng(seed).uniform(0.5, 1.5, size=shape)
    return Tensor(x, requires_grad=True, dtype=np.float64)


class Square(Function):
    """out = u²; backward returns ``factor`` u g, so factor 2 is right and anything else wrong."""

    factor = 2.0

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return u * u

    @classmethod
    def backward(cls, ctx, g):
        (u,) = ctx.saved
        return cls.factor * u * g


class HalfSquare(Square):
    factor = 1.0


class WrongAtOneEntry(Function):
    """out = 3u, but backward is off by 0.5 at flat index 5 only."""

    @staticmethod
    def forward(ctx, u):
        return 3 * u

    @staticmethod
    def backward(ctx, g):
        grad = 3 * g
        grad.reshape(-1)[5] += 0.5 * g.reshape(-1)[5]
        return grad


def test_passes_for_correct_ops_with_several_inputs_and_outputs():
    a, b = leaf((2, 3), 1), leaf((3,), 2)
    assert minidcn.gradcheck(lambda x, y: (x * y).exp() / (1 + y), [a, b])
    assert minidcn.gradcheck(lambda x, y: (x @ y, (x - y).tanh()), [a, b])
    assert minidcn.gradcheck(Square.apply, [leaf((4,))])


def test_non_tensor_inputs_and_frozen_tensors_are_passed_through():
    a = leaf((3,))
    frozen = Tensor(np.ones(3), dtype=np.float64)
    assert minidcn.gradcheck(lambda x, k, s: (x * k).sum() * s, [a, frozen, 2.0])


def test_restores_the_inputs_existing_gradients():
    a = leaf((3,))
    (a * 1).sum().backward()
    before = a.grad
    minidcn.gradcheck(lambda x: x * x, [a])
    assert a.grad is before


def test_catches_a_wrong_backward_and_names_input_index_and_values():
    u = leaf((2, 3))
    with pytest.raises(GradcheckError) as info:
        minidcn.gradcheck(HalfSquare.apply, [u], names=["u"])
    msg = str(info.value)
    assert "gradcheck failed for u of shape (2, 3)" in msg
    assert "6 of 6 index checks disagree" in msg
    match = re.search(r"worst at index \((\d), (\d)\): analytic (\S+), numeric (\S+) ", msg)
    assert match, msg
    analytic, numeric = float(match.group(3)), float(match.group(4))
    assert analytic != 0
    assert numeric == pytest.approx(2 * analytic, rel=1e-6)  # the missing factor 2


def test_points_at_the_one_wrong_entry():
    u = leaf((3, 4))
    with pytest.raises(GradcheckError, match=re.escape("1 of 12 index checks disagree; worst at index (1, 1)")):
        minidcn.gradcheck(WrongAtOneEntry.apply, [u], names=["u"])


def test_default_names_count_the_inputs():
    with pytest.raises(GradcheckError, match="gradcheck failed for input 1 of shape"):
        minidcn.gradcheck(lambda a, b: a + HalfSquare.apply(b), [leaf((2,)), leaf((2,), 3)])


def test_a_scalar_input_is_reported_too():
    with pytest.raises(GradcheckError, match=re.escape("worst at index (): analytic")):
        minidcn.gradcheck(HalfSquare.apply, [Tensor(np.float64(1.2), requires_grad=True)])


def test_large_inputs_use_random_directions_and_still_catch_errors():
    big = leaf((50, 50))  # 2500 entries > max_entries
    assert minidcn.gradcheck(Square.apply, [big], max_entries=100, directions=4)
    with pytest.raises(GradcheckError, match="4 random direction checks disagree"):
        minidcn.gradcheck(HalfSquare.apply, [big], max_entries=100, directions=4)


def test_random_directions_catch_an_error_at_one_entry():
    big = leaf((30, 30))
    with pytest.raises(GradcheckError, match="random direction"):
        minidcn.gradcheck(WrongAtOneEntry.apply, [big], max_entries=100, directions=8)


def test_tolerance_is_respected():
    # backward off by 1e-4 relative: fails at rtol 1e-6, passes at rtol 1e-3
    class Slightly(Square):
        factor = 2.0 * (1 + 1e-4)

    u = leaf((3,))
    assert minidcn.gradcheck(Slightly.apply, [u], rtol=1e-3, atol=0)
    with pytest.raises(GradcheckError):
        minidcn.gradcheck(Slightly.apply, [u], rtol=1e-6, atol=0)


def test_nan_gradients_fail():
    class NanGrad(Square):
        factor = float("nan")

    with pytest.raises(GradcheckError):
        minidcn.gradcheck(NanGrad.apply, [leaf((2,))])


def test_is_repeatable_with_a_seed():
    def report(seed):
        with pytest.raises(GradcheckError) as info:
            minidcn.gradcheck(HalfSquare.apply, [leaf((40, 40))], max_entries=10, seed=seed)
        return str(info.value)

    assert report(3) == report(3)


def test_input_errors():
    with pytest.raises(ValueError, match="no input is a Tensor with requires_grad=True"):
        minidcn.gradcheck(lambda x: x, [Tensor(np.ones(2))])
    with pytest.raises(TypeError, match="input 0 must be float64, got float32"):
        minidcn.gradcheck(lambda x: x, [Tensor([1.0], requires_grad=True)])
    with pytest.raises(TypeError, match="fn must return a Tensor"):
        minidcn.gradcheck(lambda x: 1.0, [leaf((2,))])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(eps=0), ValueError,
     "gradcheck: eps must be finite and > 0 (the differences divide by 2 eps), got 0.0"),
    (dict(eps=-1e-6), ValueError,
     "gradcheck: eps must be finite and > 0 (the differences divide by 2 eps), got -1e-06"),
    (dict(eps=float("nan")), ValueError, "gradcheck: eps must be finite, got nan"),
    (dict(eps="small"), TypeError, "gradcheck: eps must be a real number, got str"),
    (dict(atol=-1.0), ValueError, "gradcheck: atol must be finite and >= 0.0, got -1.0"),
    (dict(rtol=float("inf")), ValueError, "gradcheck: rtol must be finite and >= 0.0, got inf"),
    (dict(max_entries=-1), ValueError, "gradcheck: max_entries must be >= 0, got -1"),
    (dict(max_entries=2.5), TypeError, "gradcheck: max_entries must be an int, got float 2.5"),
    (dict(directions=-1), ValueError, "gradcheck: directions must be >= 0, got -1"),
    (dict(directions=2**20, max_entries=0), ValueError,
     "gradcheck: directions must be <= 65536 (each costs two calls of fn), got 1048576"),
    (dict(directions=2**40, max_entries=0), ValueError,
     "gradcheck: directions must be at most 2**31 - 1 = 2147483647 in magnitude (the kernels' "
     "index arithmetic), got 1099511627776"),
    (dict(max_entries=0, directions=0), ValueError,
     "gradcheck: input 0 has 6 elements, more than max_entries=0, so it is checked along "
     "random directions, but directions=0 would check none; give directions >= 1 or "
     "max_entries >= 6"),
    (dict(seed=-1), ValueError, "gradcheck: seed must be >= 0, got -1"),
    (dict(seed="0"), TypeError, "gradcheck: seed must be an int, got str '0'"),
    (dict(names=["u", "v"]), ValueError, "gradcheck: names must give one name per input, got 2 "
     "names for 1 inputs"),
    (dict(names="u"), TypeError, "gradcheck: names must be a sequence of str, got str"),
])
def test_argument_errors(kwargs, error, message):
    x = leaf((2, 3))
    with pytest.raises(error) as info:
        minidcn.gradcheck(lambda t: t * t, [x], **kwargs)
    assert str(info.value) == message


def test_directions_zero_is_fine_when_every_input_is_checked_entry_by_entry():
    assert minidcn.gradcheck(lambda t: t * t, [leaf((2, 3))], directions=0)


def test_calls_that_would_check_nothing_are_refused():
    with pytest.raises(ValueError, match="every input with requires_grad=True is empty"):
        minidcn.gradcheck(lambda t: t * t, [leaf((0, 3))])
    with pytest.raises(TypeError, match="gradcheck: inputs must be a sequence of fn's arguments, "
                                        "got Tensor; wrap a single Tensor in a list"):
        minidcn.gradcheck(lambda t: t * t, leaf((2, 3)))
    with pytest.raises(TypeError, match="gradcheck: fn must be callable, got Tensor"):
        minidcn.gradcheck(leaf((2,)), [leaf((2,))])
