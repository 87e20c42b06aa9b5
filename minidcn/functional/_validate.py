"""Argument checks shared by the public ops.

Every public op validates before any kernel runs: Numba checks no bounds, so a wrong shape
would otherwise read garbage.  Each error names the function, the argument, what it got and
what was expected.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..tensor import Tensor


def as_tensor(fn: str, name: str, value, like: Tensor | None = None,
              borrowed: bool = False) -> Tensor:
    """A Tensor from a Tensor or array-like; ``like`` fixes dtype and device for constants.

    A NumPy array is copied when the Tensor would share its memory: an op may save the
    Tensor for backward, and the caller may reuse its buffer after forward (an op owns
    what its backward reads).  ``borrowed=True`` skips that copy for a value only read
    during the call (the gradient handed to ``Tensor.backward``, which keeps none of it).
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        try:
            t = Tensor(value, dtype=like.dtype if like is not None else None)
        except TypeError as err:
            raise TypeError(f"{fn}: {name} {err}") from None
        t = t.to(like.device) if like is not None else t
        shared = not borrowed and t.device == "cpu" and isinstance(value, np.ndarray)
        if shared and np.may_share_memory(t.data, value):
            t = Tensor._from_array(t.data.copy())
        return t
    raise TypeError(f"{fn}: {name} must be a Tensor or array-like, got {type(value).__name__}")


def check_ndim(fn: str, name: str, t: Tensor, layout: str) -> None:
    """``layout`` like "(B, C, H, W)": its number of letters is the expected ndim."""
    ndim = layout.count(",") + 1
    if t.ndim != ndim:
        raise ValueError(
            f"{fn}: {name} must be {ndim}-D {layout}, got {t.ndim}-D with shape {t.shape}"
        )


def check_only_batch_empty(fn: str, name: str, t: Tensor) -> None:
    """As in torch: the batch (axis 0) may be 0, giving an empty output and empty
    gradients; any other zero-sized axis is refused."""
    if 0 in t.shape[1:]:
        raise ValueError(f"{fn}: {name} may have an empty batch (axis 0) but no other zero-sized "
                         f"axis, as in torch, got shape {t.shape}")


def check_same_dtype(fn: str, **tensors: Tensor | None) -> None:
    given = {k: v.dtype for k, v in tensors.items() if v is not None}
    if len(set(given.values())) > 1:
        desc = ", ".join(f"{k} {d}" for k, d in given.items())
        raise TypeError(f"{fn}: all tensors must have one dtype, got {desc}")


def check_same_device(fn: str, **tensors: Tensor | None) -> str:
    given = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(given.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in given.items())
        raise ValueError(f"{fn}: all tensors must be on one device, got {desc}")
    return next(iter(given.values()), "cpu")


MAX_INT = 2**31 - 1
"""The largest magnitude of any integer argument (stride, padding, dilation, kernel size,
groups, output size, sampling ratio, channel counts...).  It is torch's own limit for the
pooling arguments (C int), and it keeps every index the kernels compute, such as
i·s - p + u·d, far inside their int64 arithmetic."""

MAX_OUTPUT_ELEMENTS = 2**30
"""The most elements an op may allocate for its output, its zero-padded input or a layer's
weight (4 GiB of float32, 8 GiB of float64): a detector's largest feature maps are a
tenth of it.  More comes from a mistaken padding or size, and would exhaust the memory
of the machines minidcn is taught on."""


def shown_int(n: int) -> str:
    """An int for a message: exact up to 2**64 in magnitude, else its power of two (Python
    refuses to print ints of more than 4300 digits, so a refusal of 10**5000 could not be
    raised)."""
    if abs(n) <= 2**64:
        return str(n)
    return f"{'-' if n < 0 else ''}about 2**{abs(n).bit_length() - 1}"


def check_int(fn: str, name: str, value, minimum: int | None = None) -> int:
    """An int (Python or NumPy integer, not bool) in [minimum, MAX_INT], or in
    [-MAX_INT, MAX_INT] without a minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral,)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {shown_int(value)}")
    if abs(value) > MAX_INT:
        raise ValueError(f"{fn}: {name} must be at most 2**31 - 1 = {MAX_INT} in magnitude "
                         f"(the kernels' index arithmetic), got {shown_int(value)}")
    return value


def check_float(fn: str, name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        wanted = "finite" if minimum is None else f"finite and >= {minimum}"
        raise ValueError(f"{fn}: {name} must be {wanted}, got {value}")
    return value


def pair(fn: str, name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a (h, w) tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}: {name} must be an int or a pair, got {value!r}")
        return (check_int(fn, name, value[0], minimum), check_int(fn, name, value[1], minimum))
    v = check_int(fn, name, value, minimum)
    return (v, v)


def conv_output_size(fn: str, size, kernel, stride, padding, dilation) -> tuple[int, int]:
    """H_out, W_out = (H + 2p - (d (k - 1) + 1)) // s + 1; ValueError if not >= 1."""
    out = []
    for n, k, s, p, d, axis in zip(size, kernel, stride, padding, dilation, ("height", "width")):
        span = d * (k - 1) + 1
        if n + 2 * p < span:
            raise ValueError(
                f"{fn}: kernel {axis} with dilation spans {span} but the padded input "
                f"{axis} is only {n + 2 * p} (input {n} + 2 * padding {p})"
            )
        out.append((n + 2 * p - span) // s + 1)
    return out[0], out[1]


def check_elements(fn: str, what: str, shape, culprits: str) -> None:
    """Refuse an array of more than MAX_OUTPUT_ELEMENTS elements (``what``: "the output",
    "the padded input") before any kernel allocates it; ``culprits`` names the arguments
    that set its size."""
    elements = 1
    for n in shape:
        elements *= int(n)  # Python ints: the product cannot wrap
    if elements > MAX_OUTPUT_ELEMENTS:
        raise ValueError(f"{fn}: {what} would have shape "
                         f"({', '.join(shown_int(int(n)) for n in shape)}), "
                         f"{shown_int(elements)} elements, more than the {MAX_OUTPUT_ELEMENTS} (2**30) an "
                         f"op may allocate; check {culprits}")
