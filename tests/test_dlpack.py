"""DLPack and NumPy's array protocol: host tensors cross to NumPy and torch without a copy,
both ways, and a change made in place on one side is seen on the other."""

import numpy as np
import pytest

import minidcn
from minidcn import Tensor

try:
    import torch
except ImportError:  # torch is optional: only the torch round trips skip
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (optional; "
                                                       "pip install torch to run the torch "
                                                       "DLPack round trips)")


def test_numpy_asarray_shares_the_host_data():
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    a = np.asarray(t)
    assert a is t.data
    a[0, 0] = 7.0
    assert t.numpy()[0, 0] == 7.0
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    copied = np.array(t, copy=True)
    copied[0, 1] = -1.0
    assert t.numpy()[0, 1] == 1.0
    with pytest.raises(ValueError, match="copy=False but dtype float32"):
        np.asarray(t, dtype=np.float32, copy=False)


def test_numpy_ufuncs_refuse_tensors_instead_of_dropping_the_graph():
    t = Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError):
        np.exp(t)
    # The operators still defer to Tensor's reflected ones and stay in the graph.
    out = np.ones(2, np.float32) * t + np.float32(1.0)
    assert isinstance(out, Tensor) and out.requires_grad


def test_numpy_from_dlpack_and_back_share_memory():
    t = Tensor(np.linspace(0.0, 1.0, 5, dtype=np.float32))
    a = np.from_dlpack(t)
    assert np.shares_memory(a, t.data)
    assert t.__dlpack_device__() == (1, 0)
    host = np.arange(4.0)
    u = minidcn.from_dlpack(host)
    assert u.dtype == np.float64 and np.shares_memory(u.numpy(), host)
    host[2] = 42.0
    assert u.numpy()[2] == 42.0
    assert not u.requires_grad and u.is_leaf


def test_from_dlpack_refusals_name_what_is_unsupported():
    with pytest.raises(TypeError, match="dtype int64, expected float32 or float64"):
        minidcn.from_dlpack(np.arange(3))
    with pytest.raises(TypeError, match="must implement the DLPack protocol"):
        minidcn.from_dlpack([1.0, 2.0])

    class OnDevice:
        def __dlpack__(self, stream=None):  # pragma: no cover - never reached
            raise AssertionError("from_dlpack must refuse before asking for the capsule")

        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA

    with pytest.raises(TypeError, match="device type 2 .*numba's device arrays do not "
                                        "import DLPack"):
        minidcn.from_dlpack(OnDevice())


@pytest.mark.cuda
def test_a_cuda_tensor_is_not_exported():
    d = Tensor([1.0, 2.0]).to("cuda")
    with pytest.raises(BufferError, match="call .to\\('cpu'\\) first"):
        d.__dlpack__()
    with pytest.raises(TypeError, match="call .to\\('cpu'\\) first"):
        np.asarray(d)


@needs_torch
def test_torch_from_dlpack_shares_minidcn_memory():
    t = Tensor(np.zeros((2, 3), np.float32))
    pt = torch.from_dlpack(t)
    assert pt.data_ptr() == t.data.ctypes.data
    pt[1, 2] = 5.0
    assert t.numpy()[1, 2] == 5.0
    t.data[0, 0] = -3.0
    assert pt[0, 0].item() == -3.0


@needs_torch
def test_minidcn_from_dlpack_sees_torch_in_place_changes():
    pt = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = minidcn.from_dlpack(pt)
    assert t.shape == (2, 3) and t.dtype == np.float32
    assert t.data.ctypes.data == pt.data_ptr()
    pt.mul_(10.0)
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3) * 10)
    # The result computes like any leaf; its ops do not reach back into torch's graph.
    t.requires_grad_()
    (t * t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 2 * pt.numpy())
    with pytest.raises(TypeError, match="dtype int64"):
        minidcn.from_dlpack(torch.arange(3))
