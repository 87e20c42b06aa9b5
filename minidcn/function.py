"""Function: one differentiable op, its forward and its backward, in one place.

Every op in minidcn is a subclass of :class:`Function` with two static methods:

* ``forward(ctx, *args, **params)`` receives raw arrays (``numpy.ndarray`` on the host,
  :class:`~minidcn.device.array.CudaArray` on the device) in place of each Tensor
  argument, computes the result and stores on ``ctx`` whatever backward will need;
* ``backward(ctx, grad_output)`` returns one gradient per positional argument of
  ``forward`` (``None`` for arguments that are not differentiable).

``Function.apply`` unwraps tensors, runs forward, and, when a gradient is wanted, records the
node in the graph so that :meth:`minidcn.Tensor.backward` can call backward later.
"""

from __future__ import annotations

from .grad_mode import is_grad_enabled


class Context:
    """What forward leaves for backward: ``save_for_backward(*arrays)`` keeps arrays in
    ``ctx.saved``, any other attribute (a stride, a shape) is set directly, and
    ``needs_input_grad[i]`` says whether the i-th positional argument wants a gradient."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """Base class of every differentiable op (see the module docstring)."""

    @staticmethod
    def forward(ctx, *args, **params):  # pragma: no cover - documented interface
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_output):  # pragma: no cover - documented interface
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **params):
        from .tensor import Tensor, common_device

        common_device(cls.__name__, args)
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        track = is_grad_enabled() and any(needs)
        ctx = Context(needs if track else (False,) * len(args))
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = Tensor._from_array(cls.forward(ctx, *raw, **params))
        if track:
            out.requires_grad = True
            out._node = Node(cls, ctx, args, params)
        return out


class Node:
    """A recorded application of a Function, the graph's edges: ``inputs`` are the positional
    arguments (Tensors, or None for a left-out optional one) and ``params`` the keyword ones
    (stride, ...), as given to ``apply``, so the graph traces the forward pass (ONNX export)."""

    __slots__ = ("fn", "ctx", "inputs", "params")

    def __init__(self, fn, ctx, inputs, params=None):
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs
        self.params = {} if params is None else params

    def parents(self):
        from .tensor import Tensor

        return [t for t in self.inputs if isinstance(t, Tensor) and t.requires_grad]
