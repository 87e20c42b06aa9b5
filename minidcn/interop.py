"""Tensors cross to Python, NumPy and torch: ``item()``, ``repr``, ``numpy()``, NumPy's array
protocol and DLPack (host tensors share their memory, no copy).

:class:`ArrayInterop` is mixed into :class:`~minidcn.Tensor` (it reads ``self.data`` and
``self.device``); :func:`from_dlpack` goes the other way.  What crosses is the memory, never
the graph.
"""

from __future__ import annotations

import numpy as np

from .arrays import FLOAT_DTYPES


class ArrayInterop:
    """``item()``, ``repr(t)``, ``numpy()``, ``numpy.asarray(t)`` and ``__dlpack__``."""

    __array_priority__ = 1000  # ndarray <op> Tensor defers to Tensor's reflected op
    # NumPy ufuncs refuse Tensors (TypeError) instead of converting them through
    # __array__ and silently dropping the graph: np.exp(t) would return an ndarray with no
    # gradient.  This also makes ndarray <op> Tensor defer to the reflected op.
    __array_ufunc__ = None

    def item(self) -> float:
        if self.numel() != 1:
            raise ValueError(f"item(): tensor has {self.numel()} elements, expected 1")
        host = self.data if self.device == "cpu" else self.data.to_host()
        return float(host.reshape(()))

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(self.to("cpu").data if dev else self.data, separator=", ")
        return f"Tensor({body}, dtype={self.dtype}{dev}{grad})"

    def numpy(self) -> np.ndarray:
        """The host array (shared, not copied). A cuda tensor must be moved first."""
        if self.device != "cpu":
            raise TypeError("numpy(): tensor is on 'cuda'; call .to('cpu') first")
        return self.data

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``numpy.asarray(t)``: the host array itself (shared), like :meth:`numpy`.

        ``dtype`` other than the tensor's, or ``copy=True``, gives a copy; ``copy=False``
        with another dtype raises ValueError (NumPy's rule).  A cuda tensor raises TypeError:
        nothing is copied from the device behind your back.  The array is outside the
        graph: changing it in place changes the tensor's data, not its gradient.
        """
        if self.device != "cpu":
            raise TypeError("numpy.asarray(): tensor is on 'cuda'; call .to('cpu') first")
        if copy is False and dtype is not None and np.dtype(dtype) != self.dtype:
            raise ValueError(f"numpy.asarray(): copy=False but dtype {np.dtype(dtype)} differs "
                             f"from the tensor's {self.dtype}, which needs a copy")
        return np.array(self.data, dtype=dtype, copy=copy)

    def __dlpack__(self, *, stream=None, **kwargs):
        """Export the host data through DLPack, sharing memory (``torch.from_dlpack(t)``,
        ``numpy.from_dlpack(t)``).  The keyword arguments (``max_version``, ``dl_device``,
        ``copy``) are the DLPack protocol's and go to ``numpy.ndarray.__dlpack__``.

        A cuda tensor raises BufferError (the protocol's refusal): numba's device arrays
        do not implement DLPack; move it with ``.to('cpu')`` first.
        """
        if self.device != "cpu":
            raise BufferError("Tensor.__dlpack__: cuda tensors cannot be exported through "
                              "DLPack (numba's device arrays do not implement it); call "
                              ".to('cpu') first")
        return self.data.__dlpack__(stream=stream, **kwargs)

    def __dlpack_device__(self) -> tuple:
        """(device type, device id) for DLPack: (1, 0), the host, for a cpu tensor."""
        if self.device != "cpu":
            raise BufferError("Tensor.__dlpack_device__: cuda tensors cannot be exported "
                              "through DLPack; call .to('cpu') first")
        return self.data.__dlpack_device__()


def from_dlpack(obj):
    """A Tensor sharing memory with ``obj``, any host object that speaks DLPack (a torch
    tensor, a NumPy array, a JAX or CuPy host array...), without a copy.

    What crosses: the memory, not the graph.  A change made in place on either side after
    the call is seen on the other (DLPack shares the buffer), but the result is a leaf
    with ``requires_grad=False``, and torch refuses to export a tensor that requires grad
    (``.detach()`` it first).  minidcn tensors are float32 or float64: another dtype raises
    TypeError (convert on the other side, e.g. ``t.float()``, which copies).  Device
    (CUDA) objects raise TypeError too: numba's device arrays do not import DLPack.
    """
    from .tensor import Tensor

    fn = "minidcn.from_dlpack"
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TypeError(f"{fn}: obj must implement the DLPack protocol (__dlpack__ and "
                        f"__dlpack_device__), got {type(obj).__name__}")
    device_type, device_id = obj.__dlpack_device__()
    if int(device_type) != 1:  # kDLCPU
        raise TypeError(f"{fn}: obj lives on DLPack device type {int(device_type)} (id "
                        f"{int(device_id)}), expected the host (type 1, kDLCPU): device "
                        "tensors are not supported because numba's device arrays do not "
                        "import DLPack; move it to the host first (torch: .cpu())")
    arr = np.from_dlpack(obj)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: obj has dtype {arr.dtype}, expected float32 or float64 (convert "
                        "it first, e.g. torch's .float(), which copies)")
    return Tensor._from_array(arr)
