"""CudaArray: a C-contiguous device array that the NumPy code of the general ops runs on.

The general differentiable ops (``minidcn.functional``: arith, reduction, shape, linalg,
activation, loss) are written once, as NumPy code on raw arrays: ``a + b``, ``np.exp(a)``,
``a.sum(axis=..., keepdims=True)``, ``np.add.at(da, index, g)``, ``a @ b``.  On a device
tensor those raw arrays are CudaArrays, and the same lines run on the device because
CudaArray answers NumPy's two dispatch protocols:

* ``__array_ufunc__``: NumPy hands it every ufunc call with a CudaArray operand
  (``np.exp(a)``, ``np.maximum(a, 0)``, ``np.add.at``, ``np.add.reduce``), and the Python
  operators are ufuncs too (``NDArrayOperatorsMixin`` turns ``a + 1`` into ``np.add(a, 1)``,
  ``a @ b`` into ``np.matmul(a, b)``, ``a > 0`` into ``np.greater(a, 0)``);
* ``__array_function__``: NumPy hands it its functions (``np.broadcast_to``,
  ``np.zeros_like``, ``np.sum``, ``np.where``, ``np.transpose``, ``np.reshape``, ...).

Behind them sit a few generic kernels, the operation picked by an integer code:
``elementwise`` (unary, binary, where), ``reduce`` (sum, max, min over axes), ``matmul``
(batched, broadcast batch axes) and ``copy`` (fill, strided copy, gather, scatter-add).
They read their operands as strided views (``strided``), so broadcasting and transposed
operands are read in place.  Dtypes are resolved exactly as NumPy resolves them
(``ufunc.resolve_dtypes``, with Python scalars as NumPy's "weak" scalars: float32 array
times 0.5 stays float32).

Where CudaArray differs from ``numpy.ndarray``, on purpose:

* Nothing is copied to the host behind your back: ``np.asarray(a)``, ``float(a)``,
  ``bool(a)`` and NumPy functions with no device implementation raise TypeError; the only
  way to the host is :meth:`to_host`.
* A CudaArray owns C-contiguous memory.  ``transpose``, ``broadcast_to`` and indexing return
  new (copied) arrays, not views; ``reshape`` is a view of the same memory, as in NumPy.
  Indexing with ints alone gives a 0-d CudaArray, not a scalar.
* Dtypes: bool, int32, int64, float32, float64.  The math ufuncs (exp, log, tanh, sqrt,
  negative, absolute) and matmul take float arrays.
* Integer-array (and boolean) indices: reading is a gather and ``np.add.at`` an atomic
  scatter-add; assigning through them (``a[idx] = v``) raises TypeError.
* In-place writes (``out=``, ``a[index] = b``, ``ufunc.at``) assume the operands do not
  overlap the destination, except when an operand *is* the destination (``a += b``): a
  reshape view of the destination's memory as an operand is not detected.
* Anything else raises TypeError naming the operation.
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import cuda
from numpy.lib.array_utils import normalize_axis_tuple
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import copy as copy_kernels
from . import elementwise, matmul, reduce, strided

SUPPORTED_DTYPES = tuple(
    np.dtype(t) for t in (np.bool_, np.int32, np.int64, np.float32, np.float64)
)
ATOMIC_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64))

UNARY_OPS = {
    np.negative: elementwise.NEGATIVE, np.absolute: elementwise.ABSOLUTE,
    np.exp: elementwise.EXP, np.log: elementwise.LOG, np.tanh: elementwise.TANH,
    np.sqrt: elementwise.SQRT,
}
BINARY_OPS = {
    np.add: elementwise.ADD, np.subtract: elementwise.SUBTRACT,
    np.multiply: elementwise.MULTIPLY, np.true_divide: elementwise.DIVIDE,
    np.power: elementwise.POWER, np.maximum: elementwise.MAXIMUM,
    np.minimum: elementwise.MINIMUM, np.equal: elementwise.EQUAL,
    np.not_equal: elementwise.NOT_EQUAL, np.less: elementwise.LESS,
    np.less_equal: elementwise.LESS_EQUAL, np.greater: elementwise.GREATER,
    np.greater_equal: elementwise.GREATER_EQUAL,
}
UFUNC_REDUCTIONS = (np.add, np.maximum, np.minimum)  # ufunc.reduce: sum, max, min
UFUNC_KEYWORDS = {"__call__": {"out"}, "at": set(), "reduce": {"axis", "dtype", "keepdims", "out"}}


class CudaArray(NDArrayOperatorsMixin):
    """A device array; ``.dev`` is a C-contiguous numba ``DeviceNDArray`` (see the module doc)."""

    __array_priority__ = 1000

    def __init__(self, dev):
        self.dev = dev

    # ------------------------------------------------------------------ creation and transfer
    @classmethod
    def from_host(cls, a) -> "CudaArray":
        """A device copy of the host array ``a`` (0-d stays 0-d)."""
        host = np.asarray(a, order="C")
        _check_dtype(host.dtype, "from_host")
        return cls(cuda.to_device(host))

    @classmethod
    def empty(cls, shape, dtype) -> "CudaArray":
        """Uninitialised device memory."""
        dtype = _check_dtype(dtype, "empty")
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
        return cls(cuda.device_array(tuple(int(n) for n in shape), dtype=dtype))

    @classmethod
    def full(cls, shape, value, dtype) -> "CudaArray":
        """Every element ``value``, written on the device by the fill kernel."""
        out = cls.empty(shape, dtype)
        copy_kernels.fill(out._view(), value)
        return out

    @classmethod
    def zeros(cls, shape, dtype) -> "CudaArray":
        return cls.full(shape, 0, dtype)

    def to_host(self) -> np.ndarray:
        """The one explicit way to the host: a NumPy copy of the data."""
        return self.dev.copy_to_host()

    # ------------------------------------------------------------------ properties
    @property
    def shape(self):
        return tuple(self.dev.shape)

    @property
    def dtype(self):
        return np.dtype(self.dev.dtype)

    @property
    def ndim(self):
        return len(self.dev.shape)

    @property
    def size(self):
        return int(np.prod(self.dev.shape, dtype=np.int64))

    @property
    def T(self) -> "CudaArray":
        return self.transpose()

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("CudaArray: len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"CudaArray(shape={self.shape}, dtype={self.dtype})"

    # ------------------------------------------------------------------ no implicit host copies
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "CudaArray: NumPy asked for a host copy of a device array (np.asarray, np.array or "
            "a NumPy function with no device implementation); copy explicitly with .to_host()"
        )

    def _host_scalar(self, *_):
        raise TypeError(
            "CudaArray: converting a device array to a Python scalar needs a copy to the host; "
            "use .to_host() first"
        )

    __bool__ = __float__ = __int__ = __index__ = __complex__ = _host_scalar

    # ------------------------------------------------------------------ views of the memory
    def _flat(self):
        """The data as a 1-D device array (a view; a 0-d array gives one element)."""
        return self.dev.reshape(self.size)

    def _view(self) -> strided.StridedView:
        return strided.contiguous(self._flat(), self.shape)

    @classmethod
    def _materialise(cls, view: strided.StridedView, dtype) -> "CudaArray":
        """A new contiguous array holding ``view``'s elements, cast to ``dtype``."""
        out = cls.empty(view.shape, dtype)
        copy_kernels.copy(view, out._view())
        return out

    # ------------------------------------------------------------------ methods
    def copy(self) -> "CudaArray":
        return self.astype(self.dtype)

    def astype(self, dtype, copy=True) -> "CudaArray":
        """The elements converted to ``dtype`` by the copy kernel (float -> bool is x != 0)."""
        dtype = _check_dtype(dtype, "astype")
        if dtype == self.dtype and not copy:
            return self
        return CudaArray._materialise(self._view(), dtype)

    def reshape(self, *shape, order="C") -> "CudaArray":
        """A view of the same memory with another shape (one entry may be -1)."""
        if order != "C":
            raise TypeError(f"CudaArray.reshape: only order='C' is supported, got {order!r}")
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = tuple(shape[0])
        return CudaArray(self.dev.reshape(strided.reshaped(self.shape, shape)))

    def transpose(self, *axes) -> "CudaArray":
        """Axes permuted (reversed when none are given), copied into contiguous memory."""
        if not axes or axes == (None,):
            axes = tuple(reversed(range(self.ndim)))
        elif len(axes) == 1 and not isinstance(axes[0], numbers.Integral):
            axes = tuple(axes[0])
        if len(axes) != self.ndim:
            raise ValueError(f"CudaArray.transpose: axes {axes} don't match a {self.ndim}-D array")
        axes = normalize_axis_tuple(axes, self.ndim, "axes")
        return CudaArray._materialise(strided.permute(self._view(), axes), self.dtype)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False) -> "CudaArray":
        """Σ over ``axis`` (all when None); bool and int arrays sum in int64, as in NumPy."""
        _no_out("sum", out)
        if dtype is None:
            dtype = np.int64 if self.dtype.kind in "bi" else self.dtype
        return self.astype(dtype, copy=False)._reduce("sum", reduce.SUM, axis, keepdims)

    def max(self, axis=None, out=None, keepdims=False) -> "CudaArray":
        _no_out("max", out)
        return self._reduce("max", reduce.MAX, axis, keepdims)

    def min(self, axis=None, out=None, keepdims=False) -> "CudaArray":
        _no_out("min", out)
        return self._reduce("min", reduce.MIN, axis, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False) -> "CudaArray":
        """The sum divided by the number of summed elements (ints give float64, as in NumPy)."""
        total = self.sum(axis=axis, dtype=dtype, out=out, keepdims=keepdims)
        axes = range(self.ndim) if axis is None else normalize_axis_tuple(axis, self.ndim)
        count = int(np.prod([self.shape[d] for d in axes], dtype=np.int64))
        return np.true_divide(total, count)

    def _reduce(self, name, op, axis, keepdims) -> "CudaArray":
        axes = tuple(range(self.ndim)) if axis is None else normalize_axis_tuple(axis, self.ndim)
        axes = tuple(sorted(axes))
        if op != reduce.SUM and any(self.shape[d] == 0 for d in axes):
            raise ValueError(
                f"CudaArray.{name}: zero-size reduction has no identity, shape {self.shape}"
            )
        if keepdims:
            shape = tuple(1 if d in axes else n for d, n in enumerate(self.shape))
        else:
            shape = tuple(n for d, n in enumerate(self.shape) if d not in axes)
        out = CudaArray.empty(shape, self.dtype)
        reduce.reduce(op, self._view(), axes, out._flat())
        return out

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, index) -> "CudaArray":
        """Basic indices (ints, slices with steps, None, Ellipsis) copy the strided view out;
        integer-array or boolean indices gather the picked elements."""
        _check_host_index("indexing", index)
        shape = strided.index_shape(self.shape, index)  # IndexError as NumPy raises it
        if strided.is_basic_index(index):
            return CudaArray._materialise(strided.basic_index(self._view(), index), self.dtype)
        out = CudaArray.empty(shape, self.dtype)
        if out.size:
            positions = strided.flat_positions(self.shape, index)
            copy_kernels.gather(self._flat(), cuda.to_device(positions.ravel()), out._flat())
        return out

    def __setitem__(self, index, value) -> None:
        """``a[index] = value`` for a basic index; ``value`` a CudaArray or a scalar."""
        _check_host_index("assignment", index)
        if not strided.is_basic_index(index):
            raise TypeError(
                "CudaArray: assignment through integer-array or boolean indices is not supported "
                "on the device; use ints, slices, None and Ellipsis"
            )
        shape = strided.index_shape(self.shape, index)
        target = strided.basic_index(self._view(), index)
        if not isinstance(value, CudaArray):
            _dtype_of("assignment", value)  # a scalar; anything else raises
            copy_kernels.fill(target, value)
            return
        while value.ndim > len(shape) and value.shape[0] == 1:  # NumPy drops leading 1s
            value = value.reshape(value.shape[1:])
        _check_fits("assignment", value.shape, shape)
        copy_kernels.copy(strided.broadcast(value._view(), shape), target)

    # ------------------------------------------------------------------ NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        if method == "__call__" and ufunc is np.matmul:
            handler = _matmul
        elif method == "__call__" and ufunc in UNARY_OPS:
            handler = _unary
        elif method == "__call__" and ufunc in BINARY_OPS:
            handler = _binary
        elif method == "at" and ufunc in BINARY_OPS:
            handler = _at
        elif method == "reduce" and ufunc in UFUNC_REDUCTIONS:
            handler = _ufunc_reduce
        else:
            raise TypeError(f"CudaArray: {name} is not supported on device arrays")
        unknown = set(kwargs) - UFUNC_KEYWORDS[method]
        if ufunc is np.matmul and kwargs.get("out") is not None:
            unknown.add("out")
        if unknown:
            raise TypeError(
                f"CudaArray: {name}: keyword arguments {sorted(unknown)} are not supported"
            )
        return handler(ufunc, name, *inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        impl = ARRAY_FUNCTIONS.get(func)
        if impl is None:
            raise TypeError(f"CudaArray: numpy.{func.__name__} is not supported on device arrays")
        return impl(*args, **kwargs)


# ---------------------------------------------------------------------- operands and dtypes
def _check_dtype(dtype, what) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"CudaArray: {what}: dtype {dtype} is not supported on the device "
            "(bool, int32, int64, float32, float64)"
        )
    return dtype


def _dtype_of(name, x):
    """What NumPy's dtype resolution needs from an operand: an array's or NumPy scalar's
    dtype, or the type of a Python number (NumPy's "weak" scalars)."""
    if isinstance(x, CudaArray):
        return x.dtype
    if isinstance(x, (bool, np.generic)):
        return np.dtype(type(x))
    if isinstance(x, (int, float)):
        return type(x)
    if isinstance(x, np.ndarray):
        raise TypeError(
            f"CudaArray: {name} got a host numpy.ndarray operand; move it to the device first "
            "(CudaArray.from_host, or Tensor.to('cuda'))"
        )
    raise TypeError(f"CudaArray: {name} does not take an operand of type {type(x).__name__}")


def _on_device(x, dtype) -> CudaArray:
    """``x`` as a CudaArray of ``dtype``: an array is cast if it must be, a scalar is written
    into a 0-d array by the fill kernel."""
    if isinstance(x, CudaArray):
        return x.astype(dtype, copy=False)
    return CudaArray.full((), x, dtype)


def _broadcast_shape(name, *shapes) -> tuple:
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"CudaArray: {name}: shapes {', '.join(map(str, shapes))} do not broadcast"
        ) from None


def _check_fits(name, shape, target) -> None:
    """ValueError unless ``shape`` broadcasts to exactly ``target``."""
    try:
        fits = np.broadcast_shapes(shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"CudaArray: {name}: cannot broadcast shape {shape} to {target}")


def _output(name, out, shape, dtype) -> CudaArray:
    """A fresh result array, or the ``out=`` array after checking its shape and dtype."""
    if out is None:
        return CudaArray.empty(shape, dtype)
    (out,) = out
    if not isinstance(out, CudaArray):
        raise TypeError(f"CudaArray: {name}: out must be a CudaArray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"CudaArray: {name}: out has shape {out.shape}, the result {shape}")
    if not np.can_cast(dtype, out.dtype, "same_kind"):
        raise TypeError(f"CudaArray: {name}: cannot store the {dtype} result in out of {out.dtype}")
    return out


def _no_out(name, out) -> None:
    if out is not None:
        raise TypeError(f"CudaArray.{name}: out= is not supported")


def _check_host_index(what, index) -> None:
    parts = index if isinstance(index, tuple) else (index,)
    if any(isinstance(k, CudaArray) for k in parts):
        raise TypeError(
            f"CudaArray: {what} with a device array index is not supported; "
            "index with ints, slices, None, Ellipsis or host integer arrays"
        )


# ---------------------------------------------------------------------- ufunc handlers
def _unary(ufunc, name, x, out=None) -> CudaArray:
    loop_in, loop_out = ufunc.resolve_dtypes((_dtype_of(name, x), None))
    if loop_in.kind != "f":
        raise TypeError(f"CudaArray: {name} runs on float arrays on the device, got {loop_in}")
    x = _on_device(x, loop_in)
    result = _output(name, out, x.shape, loop_out)
    elementwise.unary(UNARY_OPS[ufunc], x._view(), result._view())
    return result


def _binary(ufunc, name, x, y, out=None) -> CudaArray:
    loop = ufunc.resolve_dtypes((_dtype_of(name, x), _dtype_of(name, y), None))
    for dtype in loop:  # NumPy may pick a loop the device lacks (bool ** bool runs in int8)
        _check_dtype(dtype, name)
    x, y = _on_device(x, loop[0]), _on_device(y, loop[1])
    shape = _broadcast_shape(name, x.shape, y.shape)
    result = _output(name, out, shape, loop[2])
    elementwise.binary(BINARY_OPS[ufunc], strided.broadcast(x._view(), shape),
                       strided.broadcast(y._view(), shape), result._view())
    return result


def _at(ufunc, name, a, index, b=None) -> None:
    """``ufunc.at(a, index, b)``: a[index] = a[index] ∘ b, unbuffered (repeats all count).

    A basic index picks each element once: an in-place binary map on the view.  An
    integer-array index may repeat elements: only ``np.add.at``, as an atomic scatter-add.
    """
    if not isinstance(a, CudaArray) or b is None:
        raise TypeError(f"CudaArray: {name} needs a CudaArray target and a second operand")
    _check_host_index(name, index)
    shape = strided.index_shape(a.shape, index)
    loop = ufunc.resolve_dtypes((a.dtype, _dtype_of(name, b), None))
    if not np.can_cast(loop[2], a.dtype, "same_kind"):
        raise TypeError(f"CudaArray: {name}: cannot store a {loop[2]} result in a {a.dtype} array")
    b = _on_device(b, loop[1])
    _check_fits(name, b.shape, shape)
    if strided.is_basic_index(index):
        target = strided.basic_index(a._view(), index)
        elementwise.binary(BINARY_OPS[ufunc], target, strided.broadcast(b._view(), shape), target)
        return
    if ufunc is not np.add or a.dtype not in ATOMIC_DTYPES:
        raise TypeError(
            f"CudaArray: {name} with integer-array indices is supported for numpy.add.at on "
            f"int32/int64/float32/float64 arrays only, got {a.dtype}"
        )
    positions = strided.flat_positions(a.shape, index)
    if positions.size:
        values = strided.broadcast(b.astype(a.dtype, copy=False)._view(), shape)
        copy_kernels.scatter_add(a._flat(), cuda.to_device(positions.ravel()), values)


def _ufunc_reduce(ufunc, name, a, axis=0, dtype=None, out=None, keepdims=False) -> CudaArray:
    if ufunc is np.add:
        return a.sum(axis=axis, dtype=dtype, out=out, keepdims=keepdims)
    if dtype is not None:
        raise TypeError(f"CudaArray: {name}: dtype= is not supported")
    reduction = CudaArray.max if ufunc is np.maximum else CudaArray.min
    return reduction(a, axis=axis, out=out, keepdims=keepdims)


def _matmul(ufunc, name, a, b, out=None) -> CudaArray:
    """NumPy's matmul: a 1-D operand becomes a matrix (a row for a, a column for b) and
    that axis is dropped from the result; batch axes broadcast."""
    for x in (a, b):
        _dtype_of(name, x)
        if not isinstance(x, CudaArray) or x.ndim == 0:
            raise ValueError(f"CudaArray: {name}: operands must be at least 1-D arrays")
    dtype = np.result_type(a.dtype, b.dtype)
    if dtype.kind != "f":
        raise TypeError(f"CudaArray: {name} runs on float arrays on the device, got {dtype}")
    a2 = a.reshape((1,) + a.shape) if a.ndim == 1 else a
    b2 = b.reshape(b.shape + (1,)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"CudaArray: {name}: inner sizes differ, {a.shape} @ {b.shape}")
    batch = _broadcast_shape(name, a2.shape[:-2], b2.shape[:-2])
    result = CudaArray.empty(batch + (a2.shape[-2], b2.shape[-1]), dtype)
    matmul.matmul(strided.broadcast(a2.astype(dtype, copy=False)._view(), batch + a2.shape[-2:]),
                  strided.broadcast(b2.astype(dtype, copy=False)._view(), batch + b2.shape[-2:]),
                  result._flat())
    shape = result.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return result.reshape(shape)


# ---------------------------------------------------------------------- NumPy functions
def _broadcast_to(array, shape, subok=False) -> CudaArray:
    """``np.broadcast_to``, materialised (a CudaArray owns contiguous memory)."""
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not isinstance(array, CudaArray):
        raise TypeError("CudaArray: numpy.broadcast_to needs a CudaArray")
    _check_fits("numpy.broadcast_to", array.shape, shape)
    return CudaArray._materialise(strided.broadcast(array._view(), shape), array.dtype)


def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    return CudaArray.full(a.shape if shape is None else shape, fill_value,
                          a.dtype if dtype is None else dtype)


def _zeros_like(a, *args, **kwargs):
    return _full_like(a, 0, *args, **kwargs)


def _ones_like(a, *args, **kwargs):
    return _full_like(a, 1, *args, **kwargs)


def _where(condition, x=None, y=None) -> CudaArray:
    """``np.where(condition, x, y)``: x where condition is true, else y, broadcast together."""
    name = "numpy.where"
    if x is None or y is None:
        raise TypeError(f"CudaArray: {name} with one argument (nonzero) is not supported")
    for operand in (condition, x, y):
        _dtype_of(name, operand)
    dtype = np.result_type(*(v.dtype if isinstance(v, CudaArray) else v for v in (x, y)))
    c, x, y = _on_device(condition, np.bool_), _on_device(x, dtype), _on_device(y, dtype)
    shape = _broadcast_shape(name, c.shape, x.shape, y.shape)
    out = CudaArray.empty(shape, dtype)
    elementwise.where(*(strided.broadcast(v._view(), shape) for v in (c, x, y)), out._view())
    return out


def _reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    return a.reshape(shape if shape is not None else newshape, order=order)


def _transpose(a, axes=None):
    return a.transpose(axes)


def _copy(a, order="K", subok=False):
    return a.copy()


ARRAY_FUNCTIONS = {
    np.broadcast_to: _broadcast_to,
    np.zeros_like: _zeros_like,
    np.ones_like: _ones_like,
    np.full_like: _full_like,
    np.where: _where,
    np.reshape: _reshape,
    np.transpose: _transpose,
    np.copy: _copy,
    np.sum: CudaArray.sum,
    np.mean: CudaArray.mean,
    np.max: CudaArray.max,
    np.amax: CudaArray.max,
    np.min: CudaArray.min,
    np.amin: CudaArray.min,
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
}
