"""CudaArray, the device array the general ops compute with, against NumPy.

Every test runs the same NumPy expression on a host ndarray and on its CudaArray copy and
compares values and dtypes.  The ``small_grid`` fixture launches every kernel on a grid of
2 blocks x 4 threads: the simulator runs each thread as a Python thread, so this keeps
the suite fast, and with more than 8 elements every grid-stride loop takes several steps.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from minidcn import Tensor
from minidcn.device import array as array_module
from minidcn.device import launch
from minidcn.device.array import CudaArray

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    """Launch every kernel on 2 blocks of 4 threads (see the module docstring)."""
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)


def dev(a):
    return CudaArray.from_host(np.asarray(a))


def assert_same(got, want, rtol=1e-15):
    """``got`` (a CudaArray) holds ``want``'s values, shape and dtype."""
    assert isinstance(got, CudaArray), type(got)
    want = np.asarray(want)
    host = got.to_host()
    assert (host.shape, host.dtype) == (want.shape, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(host, want, rtol=rtol, atol=0, equal_nan=True)
    else:
        np.testing.assert_array_equal(host, want)


def values(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(-2, 2, size=shape).astype(dtype)


# ---------------------------------------------------------------------------- elementwise

BINARY_EXPRESSIONS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: abs(a) ** b,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


@settings(max_examples=8)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_binary_operators_broadcast_like_numpy(shapes, seed):
    a, b = values(shapes.input_shapes[0], seed), values(shapes.input_shapes[1], seed + 1)
    if a.size and b.size:
        b.flat[0] = a.flat[0]  # one tie, for == and <=
    for name, expression in BINARY_EXPRESSIONS.items():
        assert_same(expression(dev(a), dev(b)), expression(a, b))


@pytest.mark.parametrize("scalar", [2, 0.5, np.float64(0.5), np.float32(3.0), True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalars_on_either_side_promote_like_numpy(scalar, dtype):
    a = values((2, 3), dtype=dtype)
    d = dev(a)
    for expression in (lambda x: x + scalar, lambda x: scalar - x, lambda x: scalar / x,
                       lambda x: x * scalar, lambda x: scalar ** abs(x), lambda x: x > scalar):
        assert_same(expression(d), expression(a), rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_mixed_and_integer_dtypes_follow_numpy():
    f32, f64 = values((3,), dtype=np.float32), values((2, 1), seed=1)
    i64, flags = np.array([1, -2, 3]), np.array([True, False, True])
    assert_same(dev(f32) + dev(f64), f32 + f64)  # float32 + float64 -> float64
    assert_same(dev(i64) / 2, i64 / 2)  # true division of ints -> float64
    assert_same(dev(i64) * dev(i64) - 1, i64 * i64 - 1)  # stays int64
    assert_same(dev(flags) * dev(flags), flags * flags)  # bool * bool -> bool
    assert_same(dev(flags) + dev(f32), flags + f32)
    big = np.array([2**62 + 1])
    assert_same(dev(big) + 1, big + 1)  # int64 arithmetic never passes through float


UNARY_EDGES = np.array([-1.5, -0.0, 0.0, 0.3, 2.0, 800.0, -800.0, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("ufunc", [np.negative, np.absolute, np.exp, np.log, np.tanh, np.sqrt])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary_ufuncs_give_numpys_values_at_the_domain_edges(ufunc, dtype):
    a = UNARY_EDGES.astype(dtype)
    with np.errstate(all="ignore"):
        want = ufunc(a)
        got = ufunc(dev(a))
    assert_same(got, want, rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_unary_ufuncs_take_int_input_as_numpy_does_but_reject_bool_math():
    ints = np.array([1, 2, 3])
    assert_same(np.exp(dev(ints)), np.exp(ints))  # int64 -> float64 loop
    with pytest.raises(TypeError, match="numpy.negative runs on float arrays.*got int64"):
        -dev(ints)


def test_in_place_operators_and_out_write_into_the_array():
    a, b = values((2, 3)), values((3,), seed=1)
    d = dev(a)
    same = d
    d += dev(b)
    d *= 2
    np.maximum(d, 0.5, out=(d,))
    a = np.maximum((a + b) * 2, 0.5)
    assert d is same
    assert_same(d, a)
    with pytest.raises(TypeError, match="cannot store the float64 result in out of int64"):
        np.add(dev(np.array([1])), 0.5, out=(dev(np.array([1])),))
    with pytest.raises(ValueError, match="out has shape"):
        np.add(dev(a), 1.0, out=(dev(np.zeros(3)),))


def test_where_broadcasts_condition_and_branches():
    a, b = values((2, 3)), values((3,), seed=1)
    assert_same(np.where(dev(a) > 0, dev(a), dev(b)), np.where(a > 0, a, b))
    assert_same(np.where(dev(a) > 0, dev(a), 0.0), np.where(a > 0, a, 0.0))
    with pytest.raises(TypeError, match="one argument"):
        np.where(dev(a))


# ---------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (1,), ()])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_over_axes_match_numpy(axis, keepdims):
    a = values((2, 3, 4))
    d = dev(a)
    for name in ("sum", "max", "min", "mean"):
        assert_same(getattr(d, name)(axis=axis, keepdims=keepdims),
                    getattr(a, name)(axis=axis, keepdims=keepdims), rtol=1e-14)
    assert_same(np.sum(d, axis=axis, keepdims=keepdims), np.sum(a, axis=axis, keepdims=keepdims),
                rtol=1e-14)


def test_reduction_dtypes_edges_and_nan():
    flags = np.array([[True, False, True], [True, True, False]])
    assert_same(dev(flags).sum(axis=1), flags.sum(axis=1))  # bool sums count, in int64
    assert_same(dev(np.arange(6)).mean(), np.arange(6).mean())  # int mean is float64
    assert_same(dev(np.array(3.5)).sum(), np.array(3.5).sum())  # 0-d
    empty = np.zeros((0, 3))
    assert_same(dev(empty).sum(axis=0), empty.sum(axis=0))  # the empty sum is 0
    with pytest.raises(ValueError, match="zero-size reduction has no identity"):
        dev(empty).max(axis=0)
    a = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    assert_same(dev(a).max(axis=1), a.max(axis=1))
    assert_same(dev(a).min(axis=1), a.min(axis=1))
    assert_same(np.add.reduce(dev(a), axis=0), np.add.reduce(a, axis=0))
    assert_same(np.maximum.reduce(dev(a), axis=1), np.maximum.reduce(a, axis=1))
    with pytest.raises(np.exceptions.AxisError):
        dev(a).sum(axis=2)


def test_a_long_reduction_and_a_long_map_cross_many_grid_strides():
    a = values((3, 50), seed=4)  # 150 elements on an 8-thread grid
    assert_same(dev(a).sum(axis=1), a.sum(axis=1), rtol=1e-13)
    assert_same(dev(a).max(), a.max())
    assert_same(np.exp(dev(a)) * dev(a), np.exp(a) * a)


# ---------------------------------------------------------------------------- shape


def test_reshape_is_a_view_and_resolves_minus_one():
    a = values((2, 3))
    d = dev(a)
    r = d.reshape(3, -1)
    assert_same(r, a.reshape(3, -1))
    r[0, 0] = 7.0  # writes through to d, as in NumPy
    a.reshape(3, -1)[0, 0] = 7.0
    assert_same(d, a)
    assert_same(np.reshape(d, (6,)), a.reshape(6))
    assert_same(dev(np.array([5.0])).reshape(()), np.array(5.0))
    with pytest.raises(ValueError, match="cannot reshape array of size 6"):
        d.reshape(4, -1)


def test_transpose_materialises_any_permutation():
    a = values((2, 3, 4))
    d = dev(a)
    for axes in [(2, 0, 1), (1, 0, 2), (-1, -2, -3)]:
        assert_same(d.transpose(axes), a.transpose(axes))
    assert_same(d.transpose(1, 2, 0), a.transpose(1, 2, 0))
    assert_same(d.T, a.T)
    assert_same(np.transpose(d, (0, 2, 1)), np.transpose(a, (0, 2, 1)))
    with pytest.raises(ValueError, match="don't match"):
        d.transpose(0, 1)


def test_astype_copy_broadcast_to_and_like_constructors():
    a = np.array([[-1.5, 0.0, 2.7]])
    d = dev(a)
    for dtype in (np.bool_, np.int32, np.int64, np.float32):
        assert_same(d.astype(dtype), a.astype(dtype))
    assert_same((d > 0).astype(np.float64), (a > 0).astype(np.float64))
    c = d.copy()
    c[0, 0] = 9.0
    assert_same(d, a)  # the copy owns its memory
    assert d.astype(np.float64, copy=False) is d
    assert_same(np.broadcast_to(d, (2, 3)).copy(), np.broadcast_to(a, (2, 3)))
    assert_same(np.zeros_like(d), np.zeros_like(a))
    assert_same(np.ones_like(d, dtype=np.float32), np.ones_like(a, dtype=np.float32))
    assert_same(np.full_like(d, 2.5), np.full_like(a, 2.5))
    with pytest.raises(ValueError, match="cannot broadcast"):
        np.broadcast_to(d, (3, 1))  # (1, 3) and (3, 1) broadcast, but to (3, 3)


def test_numpy_functions_dispatch_to_the_device():
    a = values((2, 3))
    d = dev(a)
    for fn in (np.copy, np.mean, np.max, np.amax, np.min, np.amin):
        assert_same(fn(d), fn(a), rtol=1e-15)
    assert_same(np.mean(d, axis=0, keepdims=True), np.mean(a, axis=0, keepdims=True))
    assert np.shape(d) == (2, 3) and np.ndim(d) == 2


# ---------------------------------------------------------------------------- indexing

BASIC_INDICES = [
    1, -1, (0, 2), (slice(None), 1), (slice(None, None, -1),), (Ellipsis, slice(0, 3, 2)),
    (None, 1, slice(None), None), (slice(3, 0, -2), Ellipsis, 1), (Ellipsis,), (1, 2, 3),
    (slice(5, 9),),
]


@pytest.mark.parametrize("index", BASIC_INDICES, ids=repr)
def test_basic_indexing_reads_the_strided_view(index):
    a = values((3, 4, 5))
    assert_same(dev(a)[index], a[index])


@pytest.mark.parametrize("index", [
    np.array([2, 0, 2]), (slice(None), np.array([[1], [3]]), np.array([0, 4])),
    (np.array([0, 1]), Ellipsis, np.array([4, 0])), np.array([True, False, True]),
    [1, 1], (1, np.array([3, 0, 3])),
], ids=["rows", "two arrays", "arrays around ...", "mask", "list", "int and array"])
def test_integer_array_indexing_gathers_on_the_device(index):
    a = values((3, 4, 5))
    assert_same(dev(a)[index], a[index])


def test_indexing_errors():
    d = dev(values((3, 4)))
    with pytest.raises(IndexError):
        d[3]
    with pytest.raises(IndexError):
        d[0, 0, 0]
    with pytest.raises(TypeError, match="device array index"):
        d[dev(np.array([0]))]


def test_setitem_with_basic_indices():
    a = values((3, 4))
    d = dev(a)
    d[1] = 5.0
    d[:, ::2] = dev(np.array([[1.0, 2.0]]))
    d[None, -1, 1:3] = dev(np.array([[7.0, 8.0]]))
    a[1] = 5.0
    a[:, ::2] = [[1.0, 2.0]]
    a[None, -1, 1:3] = [[7.0, 8.0]]
    assert_same(d, a)
    with pytest.raises(TypeError, match="assignment through integer-array"):
        d[np.array([0, 1])] = 1.0
    with pytest.raises(ValueError, match=r"cannot broadcast shape \(3,\) to \(4,\)"):
        d[0] = dev(np.zeros(3))


@pytest.mark.parametrize("index", [
    (slice(None), slice(1, None, 2)), (Ellipsis, 0), 1,
    (np.array([0, 2, 0, 0]), slice(None), np.array([1, 1, 1, 3])),  # repeats add up
], ids=["slices", "ellipsis", "int", "repeated arrays"])
def test_add_at_matches_numpy(index):
    want = np.zeros((3, 2, 4))
    g = values(want[index].shape, seed=3)
    np.add.at(want, index, g)
    got = CudaArray.zeros((3, 2, 4), np.float64)
    np.add.at(got, index, dev(g))
    assert_same(got, want, rtol=1e-14)
    np.add.at(want, index, 1.5)  # a scalar broadcast to every picked element
    np.add.at(got, index, 1.5)
    assert_same(got, want, rtol=1e-14)


def test_other_ufunc_at_with_basic_indices_and_errors():
    sub = dev(np.ones(4))
    np.subtract.at(sub, slice(1, 3), 0.25)
    assert_same(sub, [1.0, 0.75, 0.75, 1.0])
    with pytest.raises(TypeError, match="numpy.add.at on int32/int64/float32/float64"):
        np.multiply.at(dev(np.ones(4)), np.array([0, 0]), 2.0)


# ---------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((2, 3), (3, 4)), ((2, 1, 3, 4), (5, 4, 2)), ((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)),
    ((4, 2, 3), (3, 1)), ((1, 0), (0, 2)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_batches_broadcasts_and_promotes_1d_like_numpy(shapes):
    a, b = values(shapes[0], seed=1), values(shapes[1], seed=2)
    assert_same(dev(a) @ dev(b), a @ b, rtol=1e-14)


def test_matmul_dtypes_and_errors():
    a32, b64 = values((2, 3), dtype=np.float32), values((3, 2))
    assert_same(dev(a32) @ dev(b64), a32 @ b64, rtol=1e-14)
    with pytest.raises(ValueError, match="inner sizes differ"):
        dev(a32) @ dev(a32)
    with pytest.raises(ValueError, match="do not broadcast"):
        dev(values((2, 2, 3))) @ dev(values((3, 3, 2)))
    with pytest.raises(TypeError, match="float arrays"):
        dev(np.ones((2, 2), np.int64)) @ dev(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="at least 1-D"):
        np.matmul(dev(a32), 2.0)


# ---------------------------------------------------------------------------- the device boundary


def test_nothing_reaches_the_host_implicitly():
    d = dev(values((2,)))
    with pytest.raises(TypeError, match="copy explicitly with .to_host"):
        np.asarray(d)
    with pytest.raises(TypeError, match="to_host"):
        float(d[0])
    with pytest.raises(TypeError, match="to_host"):
        bool(d[0] > 0)
    with pytest.raises(TypeError, match="host numpy.ndarray operand"):
        d + np.ones(2)
    with pytest.raises(TypeError, match="host numpy.ndarray operand"):
        np.ones(2) * d
    assert "shape=(2,)" in repr(d)


def test_unsupported_operations_raise_type_errors_naming_them():
    d = dev(values((2, 2)))
    with pytest.raises(TypeError, match="numpy.sin is not supported"):
        np.sin(d)
    with pytest.raises(TypeError, match="numpy.concatenate is not supported"):
        np.concatenate([d, d])
    with pytest.raises(TypeError, match="numpy.add.accumulate is not supported"):
        np.add.accumulate(d)
    with pytest.raises(TypeError, match=r"keyword arguments \['where'\]"):
        np.add(d, d, where=True)
    with pytest.raises(TypeError, match="dtype complex128 is not supported"):
        CudaArray.from_host(np.ones(2, np.complex128))
    with pytest.raises(TypeError, match="dtype int8 is not supported"):
        dev(np.array([True])) ** dev(np.array([True]))  # NumPy's bool power loop is int8


def test_zeros_and_scalars_are_written_on_the_device(monkeypatch):
    """zeros and scalar operands come from the fill kernel, not from host copies."""
    def no_upload(*args, **kwargs):
        raise AssertionError("host-to-device copy")

    d = dev(values((2, 3)))
    monkeypatch.setattr(array_module.cuda, "to_device", no_upload)
    assert_same(CudaArray.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    assert_same(d * 0.0 + 1.0, np.ones((2, 3)))


def test_zero_d_arrays_stay_zero_d():
    s = dev(np.array(2.0))
    assert s.shape == () and s.ndim == 0 and s.size == 1
    assert_same(s * dev(values((2,))), 2.0 * values((2,)))
    assert_same(dev(values((2, 3)))[1, 2], values((2, 3))[1, 2])
    with pytest.raises(TypeError, match="len"):
        len(s)


def test_kernels_are_right_on_the_default_launch_grid(monkeypatch):
    """The grid the package uses outside these tests (one block of 128 threads here)."""
    monkeypatch.undo()
    a, b = values((3, 4)), values((4, 2), seed=1)
    assert_same(dev(a) @ dev(b) + dev(a).sum(axis=1, keepdims=True),
                a @ b + a.sum(axis=1, keepdims=True), rtol=1e-14)


@pytest.mark.cuda
@pytest.mark.parametrize("values", [np.array([True, False]), np.array([3, -1], dtype=np.int64)])
def test_tensor_from_a_non_float_device_array_becomes_float32_as_on_the_host(values):
    t = Tensor(CudaArray.from_host(values))
    assert t.dtype == np.float32 == Tensor(values).dtype
    np.testing.assert_array_equal((t * 2.0).to("cpu").numpy(), values.astype(np.float32) * 2)
