"""Arrays as minidcn stores them: float32/float64 only, converted from user data, and
allocated on the device of another array (host NumPy or CudaArray)."""

from __future__ import annotations

import numpy as np

from .placement import is_device_array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(data, dtype=None):
    """Convert user data to a float32/float64 ndarray (CudaArray stays), or raise TypeError.

    float64 data stays float64; everything else (lists, ints, float32) becomes float32.
    """
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"Tensor: dtype must be float32 or float64, got {dtype}")
    if is_device_array(data):
        if dtype is None:
            dtype = data.dtype if data.dtype in FLOAT_DTYPES else np.dtype(np.float32)
        return data if data.dtype == dtype else data.astype(dtype)
    # float64 in either byte order (a big-endian '>f8' array read from a file is not equal
    # to np.float64, and used to become float32); it is stored native
    given_float64 = isinstance(data, (np.ndarray, np.generic)) and data.dtype.kind == "f" \
        and data.dtype.itemsize == 8
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


def zeros(shape, dtype, like):
    """A zero array of ``shape`` and ``dtype`` on the same device as ``like``."""
    if isinstance(like, np.ndarray) or np.isscalar(like):
        return np.zeros(shape, dtype=dtype)
    return type(like).zeros(shape, dtype)


def to_device_of(host_array, like):
    """``host_array`` (NumPy) moved to the device of ``like``."""
    if isinstance(like, np.ndarray):
        return host_array
    return type(like).from_host(host_array)
