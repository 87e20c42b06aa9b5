"""Tensor construction, dtype rules and conversions."""

import numpy as np
import pytest

from minidcn import Tensor


@pytest.mark.parametrize("data", [1.5, [1.0, 2.0], [[1, 2], [3, 4]], np.float32(2.0),
                                  np.arange(6, dtype=np.float32).reshape(2, 3)])
def test_float32_is_the_default(data):
    t = Tensor(data)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), np.asarray(data, dtype=np.float32))


def test_float64_data_stays_float64():
    assert Tensor(np.ones(3)).dtype == np.float64
    assert Tensor(np.float64(2.5)).dtype == np.float64


def test_big_endian_data_keeps_its_precision_in_native_order():
    """A '>f8' array (as read from a file written big-endian) used to become float32 (the
    battery found it); it is float64, stored in native byte order for the kernels."""
    data = np.array([1 + 2.0**-40, -3.25], dtype=">f8")
    t = Tensor(data)
    assert t.dtype == np.float64 and t.data.dtype.isnative
    np.testing.assert_array_equal(t.numpy(), data)
    assert Tensor(data.astype(">f4")).dtype == np.float32


@pytest.mark.parametrize("data", [np.arange(4), np.array([True, False]), [1, 2, 3],
                                  np.arange(3, dtype=np.uint8)])
def test_ints_and_bools_become_float32(data):
    t = Tensor(data)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), np.asarray(data).astype(np.float32))


def test_explicit_dtype():
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(np.ones(2), dtype="float32").dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        Tensor([1, 2], dtype=np.int64)


@pytest.mark.parametrize("data, piece", [
    ("abc", "must be numeric"),
    (["a", "b"], "must be numeric"),
    (None, "must be numeric"),
    ([1 + 2j], "must be numeric"),
    ({"a": 1}, "must be numeric"),
])
def test_non_numeric_data_is_a_type_error(data, piece):
    with pytest.raises(TypeError, match=piece):
        Tensor(data)


def test_ragged_lists_are_a_type_error():
    with pytest.raises(TypeError, match="rectangular"):
        Tensor([[1.0, 2.0], [3.0]])


def test_shape_ndim_len_numel():
    t = Tensor(np.zeros((2, 3, 4)))
    assert t.shape == (2, 3, 4) and t.ndim == 3 and len(t) == 2 and t.numel() == 24
    assert Tensor(3.0).shape == () and Tensor(3.0).numel() == 1
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(3.0))


def test_item():
    assert Tensor([[2.5]]).item() == 2.5
    assert isinstance(Tensor(np.float64(1.0)).item(), float)
    with pytest.raises(ValueError, match="has 2 elements, expected 1"):
        Tensor([1.0, 2.0]).item()


def test_numpy_shares_the_data():
    t = Tensor(np.zeros(3, dtype=np.float32))
    t.numpy()[0] = 7
    assert t.numpy()[0] == 7


def test_detach_cuts_the_graph_and_keeps_the_values():
    a = Tensor([1.0, 2.0], requires_grad=True)
    b = (a * a).detach()
    assert not b.requires_grad and b.is_leaf
    np.testing.assert_array_equal(b.numpy(), [1.0, 4.0])
    with pytest.raises(ValueError, match="does not require grad"):
        b.sum().backward()


def test_to_same_device_is_the_identity_and_bad_device_is_rejected():
    t = Tensor([1.0])
    assert t.to("cpu") is t
    assert t.device == "cpu"
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        t.to("tpu")


@pytest.mark.cuda
def test_to_cuda_and_back_keeps_values_and_carries_the_gradient():
    a = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    d = a.to("cuda")
    assert d.device == "cuda" and d.dtype == np.float64
    with pytest.raises(TypeError, match="call .to\\('cpu'\\) first"):
        d.numpy()
    back = d.to("cpu")
    np.testing.assert_array_equal(back.numpy(), a.numpy())
    back.backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 2.0, 3.0])


def test_double_and_float_cast():
    t = Tensor([1.0, 2.0])
    assert t.double().dtype == np.float64
    assert t.double().float().dtype == np.float32


def test_repr_shows_values_dtype_and_grad_flag():
    assert repr(Tensor([1.0, 2.0])) == "Tensor([1., 2.], dtype=float32)"
    r = repr(Tensor(np.array([0.5]), requires_grad=True))
    assert r == "Tensor([0.5], dtype=float64, requires_grad=True)"


def test_tensor_from_tensor_takes_its_data():
    a = Tensor(np.arange(3.0))
    b = Tensor(a, dtype=np.float32)
    assert b.dtype == np.float32 and not b.requires_grad
    np.testing.assert_array_equal(b.numpy(), [0, 1, 2])


def test_requires_grad_and_leaf_flags():
    a = Tensor([1.0], requires_grad=True)
    assert a.requires_grad and a.is_leaf and a.grad is None
    b = a * 2
    assert b.requires_grad and not b.is_leaf
    c = Tensor([1.0]) * 2
    assert not c.requires_grad and c.is_leaf
