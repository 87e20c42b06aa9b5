"""Tensor: an array, the gradient it receives, and the node that made it.

``data`` is a float32/float64 array on the host (NumPy, "cpu") or the device (CudaArray,
"cuda"; see :mod:`minidcn.device`).  The graph is implicit: a tensor produced by an op keeps
``_node`` (the Function, its saved context and its inputs).  :meth:`Tensor.backward` sorts
the nodes reachable from the output topologically, then walks them from the output back to
the leaves, handing each node the sum of the gradients of all its uses.  That sum is what
makes reuse right: for ``b = a + a; c = b + b`` the node ``b`` is visited once, with
gradient 2, after both uses of it have reported, and ``a`` receives 4.
"""

from __future__ import annotations

import sys

import numpy as np

from .arrays import FLOAT_DTYPES, as_float_array
from .device import ToDevice, common_device, is_device_array as _is_device_array  # noqa: F401
from .grad_mode import no_grad
from .interop import ArrayInterop


class Tensor(ArrayInterop):
    """An n-dimensional float array that can record the ops applied to it.

    >>> a = Tensor([1.0, 2.0], requires_grad=True)
    >>> (a * a).sum().backward()
    >>> a.grad.numpy()
    array([2., 4.], dtype=float32)
    """

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = as_float_array(data.data if isinstance(data, Tensor) else data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._node = None

    @classmethod
    def _from_array(cls, arr) -> "Tensor":
        """Wrap an op's result without copying (it must already be float32/float64)."""
        t = cls.__new__(cls)
        t.data = arr if _is_device_array(arr) else np.asarray(arr)
        if t.data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"an op returned dtype {arr.dtype}; ops must return float32/float64")
        t.requires_grad, t.grad, t._node = False, None, None
        return t

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: len(self.data.shape))
    device = property(lambda self: "cuda" if _is_device_array(self.data) else "cpu")
    is_leaf = property(lambda self: self._node is None, doc="Made by the user, not by an op.")
    T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))

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
        return self if device == self.device else ToDevice.apply(self, device=device)

    def reshape(self, *shape):
        """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``; -1 infers one size."""
        from .functional import reshape

        return reshape(self, tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    view = reshape

    def permute(self, *dims):
        """``t.permute(2, 0, 1)`` or ``t.permute((2, 0, 1))``."""
        from .functional import permute

        return permute(self, tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)

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
            grad = Tensor(np.ones(self.shape, dtype=self.dtype)).to(self.device).data
        else:
            g = grad if isinstance(grad, Tensor) else Tensor(grad, dtype=self.dtype)
            if g.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {g.shape}, expected {self.shape}")
            if g.device != self.device:
                raise ValueError(f"backward(): grad is on {g.device}, tensor on {self.device}")
            grad = g.data if g.dtype == self.dtype else g.data.astype(self.dtype)

        pending = {id(self): grad}  # id(tensor) -> the sum of the gradients reported so far
        with no_grad():
            for t in reversed(_topological_order(self)):
                g = pending.pop(id(t), None)
                if g is not None:
                    _accumulate(t, g) if t._node is None else _propagate(t._node, g, pending)

    def zero_grad(self) -> None:
        self.grad = None


# Operators and methods, generated from one table.  ``a + b`` is Python calling
# ``Tensor.__add__(a, b)``, which calls ``minidcn.functional.add(a, b)``, which checks its
# arguments and runs ``Add.apply(a, b)`` (functional/arith.py): forward now, backward later.
# A reflected operator (``2 - a`` is ``a.__rsub__(2)``) swaps its operands: ``sub(2, a)``.
_METHODS = {  # Tensor method: minidcn.functional function
    "__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div",
    "__pow__": "pow", "__matmul__": "matmul", "__neg__": "neg", "__getitem__": "getitem",
    "sum": "sum", "mean": "mean", "transpose": "transpose", "exp": "exp", "log": "log",
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
}
_REFLECTED = ("__add__", "__sub__", "__mul__", "__truediv__", "__pow__", "__matmul__")


def _method(name: str, op: str, *fixed, reflected: bool = False):
    """``Tensor.<name>``: hands ``self`` (and ``fixed``, then its arguments) to ``functional.<op>``."""

    def method(self, *args, **kwargs):
        from . import functional  # imported here: functional imports this module

        fn = getattr(functional, op)
        return fn(args[0], self) if reflected else fn(self, *fixed, *args, **kwargs)

    method.__name__, method.__qualname__ = name, f"Tensor.{name}"
    call = "other, self" if reflected else ", ".join(["self", *map(str, fixed), "..."])
    method.__doc__ = f"``minidcn.functional.{op}({call})``: see that function for the arguments."
    return method


for _name, _op in _METHODS.items():
    setattr(Tensor, _name, _method(_name, _op))
for _name in _REFLECTED:
    setattr(Tensor, "__r" + _name[2:], _method("__r" + _name[2:], _METHODS[_name], reflected=True))
Tensor.double, Tensor.float = _method("double", "cast", "float64"), _method("float", "cast", "float32")


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


def _propagate(node, g, pending: dict) -> None:
    """Run ``node``'s backward on its output's gradient ``g``; add each input's share to
    ``pending`` (a sum when an input is used more than once).  A function of its own so
    that its locals are gone before a leaf is visited: :func:`_accumulate` counts references.
    """
    name, grads = node.fn.__name__, node.fn.backward(node.ctx, g)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(node.inputs):
        raise RuntimeError(f"{name}.backward returned {len(grads)} gradients "
                           f"for {len(node.inputs)} inputs")
    for inp, gi in zip(node.inputs, grads):
        if not (isinstance(inp, Tensor) and inp.requires_grad) or gi is None:
            continue
        if tuple(gi.shape) != inp.shape or gi.dtype != inp.dtype:
            raise RuntimeError(f"{name}.backward produced a gradient of shape {tuple(gi.shape)} "
                               f"and dtype {gi.dtype} for an input of shape {inp.shape} "
                               f"and dtype {inp.dtype}")
        if _is_device_array(gi) != (inp.device == "cuda"):
            raise RuntimeError(f"{name}.backward produced a gradient on the wrong device")
        prev = pending.get(id(inp))
        pending[id(inp)] = gi if prev is None else prev + gi


def _accumulate(leaf: Tensor, g) -> None:
    """leaf.grad += g; the first gradient is adopted without a copy when nothing else holds it.

    A leaf's gradient must be its own memory: not the array passed to ``backward``, not the
    array ``a + b`` hands to both ``a`` and ``b``.  Copying always is safe but costs a pass
    over memory (0.8 ms of 4 for the norm benchmark), so, like torch, the engine adopts a
    host array that owns its memory when the only references to it are the engine's own:
    ``backward``'s loop variable, the two arguments down to here and getrefcount's, counted
    once at import (:data:`_ENGINE_REFERENCES`) on a fresh array passed down the same way.
    Device arrays are always copied (a CudaArray reshape shares memory without being a view).
    """
    if leaf.grad is not None:
        leaf.grad = Tensor._from_array(leaf.grad.data + g)
    else:
        adopt = isinstance(g, np.ndarray) and g.base is None and _refcount(g) <= _ENGINE_REFERENCES
        leaf.grad = Tensor._from_array(g if adopt else g.copy())


def _refcount(array) -> int:
    return sys.getrefcount(array)


def _references_seen_two_calls_down() -> int:
    """sys.getrefcount of an array held by one local and passed down two calls."""
    fresh = np.empty(0)
    return (lambda array: _refcount(array))(fresh)


_ENGINE_REFERENCES = _references_seen_two_calls_down()
