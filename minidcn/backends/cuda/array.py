"""CudaArray: a C-contiguous numba.cuda device array with the NumPy surface autograd uses.

TODO(helper): complete the surface listed in the class docstring.
"""

from __future__ import annotations

import numpy as np
from numba import cuda


class CudaArray:
    """A device array (``.dev`` is a C-contiguous numba ``DeviceNDArray``)."""

    __array_priority__ = 1000

    def __init__(self, dev):
        self.dev = dev

    @classmethod
    def from_host(cls, a) -> "CudaArray":
        return cls(cuda.to_device(np.ascontiguousarray(a)))

    @classmethod
    def empty(cls, shape, dtype) -> "CudaArray":
        return cls(cuda.device_array(tuple(shape), dtype=np.dtype(dtype)))

    def to_host(self) -> np.ndarray:
        return self.dev.copy_to_host()

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

    @classmethod
    def zeros(cls, shape, dtype) -> "CudaArray":
        out = cls.empty(shape, dtype)
        if out.size:
            out.dev.copy_to_device(np.zeros(tuple(shape), dtype=np.dtype(dtype)))
        return out
