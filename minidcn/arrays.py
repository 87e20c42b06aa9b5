"""Allocation that follows an existing array onto its device (host NumPy or CudaArray)."""

from __future__ import annotations

import numpy as np


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
