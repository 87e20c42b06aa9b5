"""Scalar formulas written once, in plain Python, and compiled for each target.

A formula that two backends need (the bilinear weights and their derivatives, the corner
reads, the RoI bin geometry, the pooling window, ...) lives in one module of this package
as an ordinary Python function of scalars.  Each backend compiles it for its own target:

* ``numba_cpu`` with :func:`for_cpu`, an ``@njit`` function inlined into the CPU loops;
* ``cuda`` with :func:`for_gpu`, a CUDA device function inlined into the kernels.

Formulas compose.  A formula may call another formula by its bare name (imported into its
module, ``from .bilinear import bilinear_weights``): compiling it for a target first compiles
every formula it calls for the same target, then builds the formula over a copy of its
module's globals in which those names are the compiled versions (the plain Python functions
stay as they are, for the reader and for Python callers).  A formula is compiled once per
target, however many backend modules or other formulas ask for it.  So a per-point block
that both backends need (where a kernel point samples, its weights, its modulation) is one
formula built from smaller ones, not the same lines written in each backend.

Neither compile happens here at import: ``for_gpu`` imports ``numba.cuda`` only when a cuda
backend module asks for it, and numba compiles a device function lazily, when the first
kernel that calls it is compiled, so no driver is needed to import a backend.  The
``reference`` backend, written in NumPy to be read, states the same formulas over whole
arrays.

numba's on-disk cache (``cache=True``) checks only the source file of the kernel it caches,
not the files of the formulas that kernel inlined, and a composed formula's cache entry
likewise checks only its own file, not the files of the formulas it calls: after editing a
formula here, delete the cached kernels (``find minidcn -name '*.nbi' -delete``) or touch the
backend files that use it.
"""

from __future__ import annotations

import types

__all__ = ["for_cpu", "for_gpu"]

_compiled = {}  # (target, formula) -> the compiled formula


def _is_formula(value) -> bool:
    """A plain Python function defined in a module of this package."""
    return isinstance(value, types.FunctionType) and value.__module__.startswith(__name__ + ".")


def _compose(target, compile_one, formula):
    """``formula`` compiled by ``compile_one`` over globals in which the formulas it calls are
    compiled for ``target`` too (memoised per target)."""
    key = (target, formula)
    if key not in _compiled:
        namespace = dict(formula.__globals__)
        for name in formula.__code__.co_names:
            if _is_formula(namespace.get(name)):
                namespace[name] = _compose(target, compile_one, namespace[name])
        rebuilt = types.FunctionType(formula.__code__, namespace, formula.__name__,
                                     formula.__defaults__, formula.__closure__)
        # numba's cache finds a function by its qualified name and source file: keep both.
        rebuilt.__qualname__, rebuilt.__module__ = formula.__qualname__, formula.__module__
        rebuilt.__doc__ = formula.__doc__
        _compiled[key] = compile_one(rebuilt)
    return _compiled[key]


def _cpu(function):
    from numba import njit

    return njit(inline="always", cache=True)(function)


def _gpu(function):
    from numba import cuda

    return cuda.jit(device=True, inline=True)(function)


def for_cpu(*formulas):
    """Each formula (and every formula it calls) as an ``@njit`` function that numba inlines
    into its callers: one function for one formula, a tuple in the same order for several."""
    compiled = tuple(_compose("cpu", _cpu, f) for f in formulas)
    return compiled[0] if len(compiled) == 1 else compiled


def for_gpu(*formulas):
    """Each formula (and every formula it calls) as a CUDA device function, inlined into the
    kernels that call it: one function for one formula, a tuple in the same order for several."""
    compiled = tuple(_compose("gpu", _gpu, f) for f in formulas)
    return compiled[0] if len(compiled) == 1 else compiled
