"""Tensor: an array, the gradient it receives, and the node that made it.

``data`` is float32/float64, on the host or the device (:mod:`minidcn.device`).  The graph
is implicit: a tensor made by an op keeps ``_node`` (its Function, saved context and inputs).
:meth:`Tensor.backward` sorts the tensors reachable from the output topologically and walks
them from the output back to the leaves, handing each node the sum of the gradients of all
its uses.  That sum makes reuse right: for ``b = a + a; c = b + b``, ``b`` is visited once,
with gradient 2, after both its uses have reported; ``a`` gets 4.
"""

from __future__ import annotations

import sys

import numpy as np

from .arrays import FLOAT_DTYPES, as_float_array
from .placement import OnDevice, common_device, is_device_array as _is_device_array  # noqa: F401
from .grad_mode import no_grad
from .interop import ArrayInterop


class Tensor(OnDevice, ArrayInterop):
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
    is_leaf = property(lambda self: self._node is None, doc="Made by the user, not by an op.")
    T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._from_array(self.data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self) -> None:
        self.grad = None

    def backward(self, grad=None) -> None:
        """Add d(self)/d(leaf) to ``leaf.grad`` for every leaf that requires grad.  ``grad``
        flows into ``self``; it may be omitted only for a tensor with a single element."""
        if not self.requires_grad:
            raise ValueError("backward(): this tensor does not require grad and has no graph")
        if grad is None:
            if self.numel() != 1:
                raise ValueError("backward(): grad can be omitted only for a single-element "
                                 f"tensor, this one has shape {self.shape}; pass grad=")
            grad = Tensor(np.ones(self.shape, dtype=self.dtype)).to(self.device).data
        else:
            from .functional._validate import as_tensor  # names grad when it is not numeric
            g = as_tensor("backward()", "grad", grad, borrowed=True)  # _accumulate copies it
            if g.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {g.shape}, expected {self.shape}")
            if g.device != self.device:
                raise ValueError(f"backward(): grad is on {g.device}, tensor on {self.device}")
            grad = g.data if g.dtype == self.dtype else g.data.astype(self.dtype)
        pending = {id(self): grad}  # id(tensor) -> sum of the gradients its uses reported
        with no_grad():
            for t in reversed(_topological_order(self)):
                g = pending.pop(id(t), None)
                if g is not None:
                    _accumulate(t, g) if t._node is None else _propagate(t._node, g, pending)


# The operators and methods below are generated from this table.  ``a + b`` is Python calling
# ``Tensor.__add__(a, b)``, which calls ``minidcn.functional.add(a, b)``, which checks its
# arguments and runs ``Add.apply(a, b)`` (functional/arith.py): forward now, backward later.
# A reflected operator swaps its operands: ``2 - a`` is ``a.__rsub__(2)``, so ``sub(2, a)``.
_METHODS = {  # Tensor method: minidcn.functional function
    "__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div",
    "__pow__": "pow", "__matmul__": "matmul", "__neg__": "neg", "__getitem__": "getitem",
    "sum": "sum", "mean": "mean", "transpose": "transpose", "exp": "exp", "log": "log",
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
    "reshape": "reshape", "view": "reshape", "permute": "permute",  # sizes: (2, 3) or 2, 3
}
_REFLECTED = {"__radd__": "add", "__rsub__": "sub", "__rmul__": "mul", "__rtruediv__": "div",
              "__rpow__": "pow", "__rmatmul__": "matmul"}


def _method(name: str, op: str, *fixed):
    """``Tensor.<name>``: calls ``minidcn.functional.<op>`` with ``self``, ``fixed``, the rest."""

    def method(self, *args, **kwargs):
        from . import functional  # imported here: functional imports this module
        if name in _REFLECTED:
            return getattr(functional, op)(args[0], self)
        if op in ("reshape", "permute"):  # t.reshape(2, 3) and t.reshape((2, 3)) alike
            args = (tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list))
                    else args,)
        return getattr(functional, op)(self, *fixed, *args, **kwargs)

    method.__name__, method.__qualname__ = name, f"Tensor.{name}"
    call = "other, self" if name in _REFLECTED else ", ".join(["self", *map(str, fixed), "..."])
    method.__doc__ = f"``minidcn.functional.{op}({call})``: see there for the arguments."
    return method


for _name, _op in {**_METHODS, **_REFLECTED}.items():
    setattr(Tensor, _name, _method(_name, _op))
Tensor.double = _method("double", "cast", "float64")
Tensor.float = _method("float", "cast", "float32")


def _topological_order(root: Tensor) -> list:
    """Tensors reachable from ``root``, each after all tensors it was computed from
    (an iterative depth-first search: deep graphs do not hit Python's recursion limit)."""
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
    ``pending``.  Its locals are gone before a leaf is visited (:func:`_accumulate` counts)."""
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
    """leaf.grad += g.  A leaf's gradient must be its own memory (not the array given to
    ``backward``, nor the one ``a + b`` hands to ``a`` and ``b``), but copying costs a pass over
    memory (0.8 ms for bench norm's 8 MB input), so, like torch, a first gradient is adopted if
    it is a host array owning its memory that only the engine holds (:data:`_ENGINE_REFERENCES`).
    Device arrays are copied (a CudaArray reshape shares memory without being a view)."""
    if leaf.grad is not None:
        leaf.grad = Tensor._from_array(leaf.grad.data + g)
    else:
        adopt = (isinstance(g, np.ndarray) and g.base is None
                 and sys.getrefcount(g) <= _ENGINE_REFERENCES)
        leaf.grad = Tensor._from_array(g if adopt else g.copy())


def _references_seen_one_call_down() -> int:
    """sys.getrefcount of an array held by a local and passed down one call, as backward does."""
    fresh = np.empty(0)
    return (lambda array: sys.getrefcount(array))(fresh)


_ENGINE_REFERENCES = _references_seen_one_call_down()  # backward's g, as _accumulate counts it
