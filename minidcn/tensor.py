"""Tensor: an array, the gradient it receives, and the node that made it.

A Tensor wraps ``data``: a ``numpy.ndarray`` on the host ("cpu") or a
:class:`~minidcn.device.array.CudaArray` on the device ("cuda").  Only floating
point is stored: float32 by default, float64 when the data already is float64.

The graph is implicit.  A tensor produced by an op keeps ``_node`` (the Function, its
saved context and its inputs).  :meth:`Tensor.backward` sorts the nodes reachable from the
output topologically, then walks them from the output back to the leaves, handing each
node the sum of the gradients of all its uses.  That sum is what makes reuse right:
for ``b = a + a; c = b + b`` the node ``b`` is visited once, with gradient 2, after both
uses of it have reported, and ``a`` receives 4.
"""

from __future__ import annotations

import sys

import numpy as np

from .function import Function
from .grad_mode import no_grad

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_device_array(data) -> bool:
    return type(data).__name__ == "CudaArray"


def _as_float_array(data, dtype=None):
    """Convert user data to a float32/float64 ndarray, or raise TypeError."""
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"Tensor: dtype must be float32 or float64, got {dtype}")
    if _is_device_array(data):
        if dtype is None:
            dtype = data.dtype if data.dtype in FLOAT_DTYPES else np.dtype(np.float32)
        return data if data.dtype == dtype else data.astype(dtype)
    given_float64 = isinstance(data, (np.ndarray, np.generic)) and data.dtype == np.float64
    try:
        arr = np.asarray(data)
    except ValueError as err:  # ragged nested lists
        raise TypeError(f"Tensor: data must be a rectangular numeric array ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor: data must be numeric (bool, int or float), got dtype {arr.dtype}"
        )
    if dtype is None:
        dtype = np.float64 if given_float64 else np.float32
    return np.array(arr, dtype=dtype, copy=None)


def common_device(op_name, args) -> str:
    """The one device all Tensor arguments live on; ValueError if they differ."""
    devices = {a.device for a in args if isinstance(a, Tensor)}
    if len(devices) > 1:
        raise ValueError(
            f"{op_name}: expected all tensors on one device, got {sorted(devices)}; "
            "move them with .to('cpu') or .to('cuda') first"
        )
    return devices.pop() if devices else "cpu"


class Tensor:
    """An n-dimensional float array that can record the ops applied to it.

    >>> a = Tensor([1.0, 2.0], requires_grad=True)
    >>> (a * a).sum().backward()
    >>> a.grad.numpy()
    array([2., 4.], dtype=float32)
    """

    __array_priority__ = 1000  # ndarray <op> Tensor defers to Tensor's reflected op
    # NumPy ufuncs refuse Tensors (TypeError) instead of converting them through
    # __array__ and silently dropping the graph: np.exp(t) would return an ndarray with no
    # gradient.  This also makes ndarray <op> Tensor defer to the reflected op.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _as_float_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._node = None

    @classmethod
    def _from_array(cls, arr) -> "Tensor":
        """Wrap an op's result without copying (it must already be float32/float64)."""
        t = cls.__new__(cls)
        if not _is_device_array(arr):
            arr = np.asarray(arr)
        if arr.dtype not in FLOAT_DTYPES:
            raise TypeError(f"an op returned dtype {arr.dtype}; ops must return float32/float64")
        t.data = arr
        t.requires_grad = False
        t.grad = None
        t._node = None
        return t

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def device(self) -> str:
        return "cuda" if _is_device_array(self.data) else "cpu"

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(self.to("cpu").data if dev else self.data, separator=", ")
        return f"Tensor({body}, dtype={self.dtype}{dev}{grad})"

    # ------------------------------------------------------------------ conversions
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

    def item(self) -> float:
        if self.numel() != 1:
            raise ValueError(f"item(): tensor has {self.numel()} elements, expected 1")
        host = self.data if self.device == "cpu" else self.data.to_host()
        return float(host.reshape(()))

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._from_array(self.data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = bool(flag)
        return self

    def to(self, device: str) -> "Tensor":
        """Move to ``"cpu"`` or ``"cuda"``; differentiable (the gradient moves back)."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"to(): device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        return ToDevice.apply(self, device=device)

    def double(self) -> "Tensor":
        from .functional import cast

        return cast(self, np.float64)

    def float(self) -> "Tensor":
        from .functional import cast

        return cast(self, np.float32)

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the gradient flowing into ``self``; it may be omitted only for a tensor
        with a single element.  Calling backward again adds to the leaves' gradients.
        """
        if not self.requires_grad:
            raise ValueError("backward(): this tensor does not require grad and has no graph")
        if grad is None:
            if self.numel() != 1:
                raise ValueError(
                    f"backward(): grad can be omitted only for a single-element tensor, "
                    f"this one has shape {self.shape}; pass grad= of that shape"
                )
            seed = np.ones(self.shape, dtype=self.dtype)
            grad = Tensor(seed).to(self.device).data
        else:
            g = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=self.dtype)
            if g.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {g.shape}, expected {self.shape}")
            if g.device != self.device:
                raise ValueError(f"backward(): grad is on {g.device}, tensor on {self.device}")
            grad = g.data if g.dtype == self.dtype else g.data.astype(self.dtype)

        pending = {id(self): grad}
        with no_grad():
            for t in reversed(_topological_order(self)):
                g = pending.pop(id(t), None)
                if g is None:
                    continue
                if t._node is None:
                    _accumulate(t, g)
                else:
                    _propagate(t._node, g, pending)

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        from .functional import add

        return add(self, other)

    def __radd__(self, other):
        from .functional import add

        return add(other, self)

    def __sub__(self, other):
        from .functional import sub

        return sub(self, other)

    def __rsub__(self, other):
        from .functional import sub

        return sub(other, self)

    def __mul__(self, other):
        from .functional import mul

        return mul(self, other)

    def __rmul__(self, other):
        from .functional import mul

        return mul(other, self)

    def __truediv__(self, other):
        from .functional import div

        return div(self, other)

    def __rtruediv__(self, other):
        from .functional import div

        return div(other, self)

    def __neg__(self):
        from .functional import neg

        return neg(self)

    def __pow__(self, other):
        from .functional import pow

        return pow(self, other)

    def __rpow__(self, other):
        from .functional import pow

        return pow(other, self)

    def __matmul__(self, other):
        from .functional import matmul

        return matmul(self, other)

    def __rmatmul__(self, other):
        from .functional import matmul

        return matmul(other, self)

    def __getitem__(self, index):
        from .functional import getitem

        return getitem(self, index)

    # ------------------------------------------------------------------ methods
    def sum(self, dim=None, keepdim=False):
        from .functional import sum

        return sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        from .functional import mean

        return mean(self, dim, keepdim)

    def reshape(self, *shape):
        from .functional import reshape

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    view = reshape

    def permute(self, *dims):
        from .functional import permute

        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return permute(self, dims)

    def transpose(self, dim0, dim1):
        from .functional import transpose

        return transpose(self, dim0, dim1)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    def exp(self):
        from .functional import exp

        return exp(self)

    def log(self):
        from .functional import log

        return log(self)

    def relu(self):
        from .functional import relu

        return relu(self)

    def sigmoid(self):
        from .functional import sigmoid

        return sigmoid(self)

    def tanh(self):
        from .functional import tanh

        return tanh(self)


def from_dlpack(obj) -> Tensor:
    """A Tensor sharing memory with ``obj``, any host object that speaks DLPack (a torch
    tensor, a NumPy array, a JAX or CuPy host array...), without a copy.

    What crosses: the memory, not the graph.  A change made in place on either side after
    the call is seen on the other (DLPack shares the buffer), but the result is a leaf
    with ``requires_grad=False``, and torch refuses to export a tensor that requires grad
    (``.detach()`` it first).  minidcn tensors are float32 or float64: another dtype raises
    TypeError (convert on the other side, e.g. ``t.float()``, which copies).  Device
    (CUDA) objects raise TypeError too: numba's device arrays do not import DLPack.
    """
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


def _topological_order(root: Tensor) -> list:
    """Tensors reachable from ``root``, each after all tensors it was computed from.

    Iterative depth-first search (deep graphs do not hit Python's recursion limit).
    """
    order, seen = [], {id(root)}
    stack = [(root, iter(root._node.parents() if root._node else ()))]
    while stack:
        t, children = stack[-1]
        for child in children:
            if id(child) not in seen:
                seen.add(id(child))
                stack.append((child, iter(child._node.parents() if child._node else ())))
                break
        else:
            stack.pop()
            order.append(t)
    return order


def _check_grad(fn_name, t: Tensor, g) -> None:
    if tuple(g.shape) != t.shape or g.dtype != t.dtype:
        raise RuntimeError(
            f"{fn_name}.backward produced a gradient of shape {tuple(g.shape)} and dtype "
            f"{g.dtype} for an input of shape {t.shape} and dtype {t.dtype}"
        )
    if _is_device_array(g) != (t.device == "cuda"):
        raise RuntimeError(f"{fn_name}.backward produced a gradient on the wrong device")


def _propagate(node, g, pending: dict) -> None:
    """Run ``node``'s backward on its output's gradient ``g``; add each input's share to
    ``pending`` (a sum when an input is used more than once).

    A function of its own, so that its locals (the returned tuple) are gone before the
    leaves are visited: :func:`_accumulate` counts the references to a gradient.
    """
    grads = node.fn.backward(node.ctx, g)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(node.inputs):
        raise RuntimeError(
            f"{node.fn.__name__}.backward returned {len(grads)} gradients "
            f"for {len(node.inputs)} inputs"
        )
    for inp, gi in zip(node.inputs, grads):
        if not (isinstance(inp, Tensor) and inp.requires_grad) or gi is None:
            continue
        _check_grad(node.fn.__name__, inp, gi)
        prev = pending.get(id(inp))
        pending[id(inp)] = gi if prev is None else prev + gi


def _accumulate(leaf: Tensor, g) -> None:
    """leaf.grad += g; the first gradient is adopted as it is when nothing else holds it.

    A leaf's gradient must be its own memory: if it were the array the user passed to
    ``backward``, or the same array as another leaf's gradient (``a + b`` hands its
    gradient to both), an in-place change to one would change the other.  Copying every
    time is safe but costs a full pass over memory (1 ms for the 8 MB activations of the
    norm benchmark).  So, like torch's gradient accumulator, the engine adopts the array
    without a copy when it owns its memory (not a view) and the only references to it are
    the engine's own (:func:`_held_by_engine_only`); otherwise it copies.
    """
    if leaf.grad is not None:
        leaf.grad = Tensor._from_array(leaf.grad.data + g)
    else:
        leaf.grad = Tensor._from_array(g if _held_by_engine_only(g) else g.copy())


def _held_by_engine_only(g) -> bool:
    """True if ``g`` is a host array owning its memory that only the backward loop holds.

    The references the engine itself holds at this point are fixed: ``backward``'s local,
    ``_accumulate``'s argument, this function's argument and ``sys.getrefcount``'s own.
    :data:`_ENGINE_REFERENCES` is measured once, on a fresh array passed down the same
    chain of calls, so the rule does not depend on how a Python version counts them.
    Device arrays are always copied: a CudaArray reshape shares memory with its source
    without being a NumPy view, so the count would not see it.
    """
    return (isinstance(g, np.ndarray) and g.base is None
            and sys.getrefcount(g) <= _ENGINE_REFERENCES)


def _references_seen_two_calls_down() -> int:
    """sys.getrefcount of an array held by one local and passed down two calls."""

    def first(array):
        return second(array)

    def second(array):
        return sys.getrefcount(array)

    fresh = np.empty(0)
    return first(fresh)


_ENGINE_REFERENCES = _references_seen_two_calls_down()


class ToDevice(Function):
    """Copy between host and device; the gradient makes the return trip."""

    @staticmethod
    def forward(ctx, x, device):
        ctx.source = "cuda" if _is_device_array(x) else "cpu"
        return _move(x, device)

    @staticmethod
    def backward(ctx, grad):
        return _move(grad, ctx.source)


def _move(arr, device):
    if device == "cpu":
        return arr.to_host() if _is_device_array(arr) else arr
    from .device.array import CudaArray

    return arr if _is_device_array(arr) else CudaArray.from_host(arr)
