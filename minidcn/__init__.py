"""minidcn: deformable convolutional networks built from scratch in NumPy and Numba.

A tiny autograd core (:class:`Tensor`), the ops of the DCN papers (convolution, bilinear
sampling, deformable convolution v1/v2, RoI and deformable RoI pooling, group
normalisation), each written three ways (``reference`` NumPy, ``numba`` CPU, ``cuda``), and
a finite-difference :func:`gradcheck`.

Importing minidcn arranges its threads first (numba's pool waits passively, BLAS runs on
one thread, each unless you set the variable yourself): see :mod:`minidcn.threads`.
"""

from . import threads  # first: its environment variables must be set before NumPy and numba load
from . import functional, nn, optim
from .backends import backend, get_backend, set_backend
from .grad_mode import is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck
from .nn.init import manual_seed
from .interop import from_dlpack
from .tensor import Tensor

__version__ = "0.1.0"

__all__ = [
    "Tensor", "from_dlpack", "no_grad", "is_grad_enabled", "backend", "get_backend", "set_backend",
    "gradcheck", "GradcheckError", "manual_seed", "functional", "nn", "optim", "threads",
]
