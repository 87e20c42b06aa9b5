"""Scalar formulas written once, in plain Python, and compiled for each target.

A formula that two backends need (the bilinear weights and their derivatives, the corner
reads, the RoI bin geometry, the pooling window, ...) lives in one module of this package
as an ordinary Python function of scalars.  Each backend compiles it for its own target:

* ``numba_cpu`` with :func:`for_cpu`, an ``@njit`` function inlined into the CPU loops;
* ``cuda`` with :func:`for_gpu`, a CUDA device function inlined into the kernels.

Neither compile happens here at import: ``for_gpu`` imports ``numba.cuda`` only when a cuda
backend module asks for it, and numba compiles a device function lazily, when the first
kernel that calls it is compiled, so no driver is needed to import a backend.  The
``reference`` backend, written in NumPy to be read, states the same formulas over whole
arrays.

numba's on-disk cache (``cache=True``) checks only the source file of the kernel it caches,
not the files of the formulas that kernel inlined: after editing a formula here, delete the
cached kernels (``find minidcn -name '*.nbi' -delete``) or touch the backend files that use it.
"""

from __future__ import annotations

__all__ = ["for_cpu", "for_gpu"]


def for_cpu(*formulas):
    """Each formula as an ``@njit`` function that numba inlines into its callers: one
    function for one formula, a tuple in the same order for several."""
    from numba import njit

    compiled = tuple(njit(inline="always", cache=True)(f) for f in formulas)
    return compiled[0] if len(compiled) == 1 else compiled


def for_gpu(*formulas):
    """Each formula as a CUDA device function, inlined into the kernels that call it: one
    function for one formula, a tuple in the same order for several."""
    from numba import cuda

    compiled = tuple(cuda.jit(device=True, inline=True)(f) for f in formulas)
    return compiled[0] if len(compiled) == 1 else compiled
