"""The three kernel backends mirror each other: same kernel names, same signatures, and every
kernel a ``def`` a reader can find with grep.

What a backend exports: the public names of its package, ``minidcn.backends.<backend>``,
that are not submodules.  The package star-imports its kernel modules, so these are the
union of the modules' ``__all__`` lists, and they are what ``kernels(device)`` hands the
functional layer.  The cuda backend is imported under numba's CUDA simulator (conftest).
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest

BACKENDS = ("reference", "numba_cpu", "cuda")


def _package(name):
    return importlib.import_module(f"minidcn.backends.{name}")


def _exported(name):
    """{public name: object} of a backend package, submodules left out."""
    package = _package(name)
    return {n: getattr(package, n) for n in dir(package)
            if not n.startswith("_") and not inspect.ismodule(getattr(package, n))}


def _kernel_modules(name):
    """The backend's kernel modules: those the reference backend has too (numba_cpu also
    keeps helper modules, such as its chunking, that export no kernel)."""
    reference = _package("reference")
    names = [n for n, m in vars(reference).items()
             if inspect.ismodule(m) and m.__name__ == f"{reference.__name__}.{n}"]
    return {n: importlib.import_module(f"minidcn.backends.{name}.{n}") for n in names}


def test_every_backend_package_exports_exactly_its_kernel_modules_all():
    for name in BACKENDS:
        modules = _kernel_modules(name)
        assert len(modules) >= 6, (name, sorted(modules))
        declared = set().union(*(set(m.__all__) for m in modules.values()))
        assert set(_exported(name)) == declared, (name, sorted(set(_exported(name)) ^ declared))


def test_the_three_backends_export_the_same_kernel_names():
    names = {name: set(_exported(name)) for name in BACKENDS}
    assert names["reference"], "no kernels found"
    for name in BACKENDS[1:]:
        assert names[name] == names["reference"], (
            name, sorted(names[name] ^ names["reference"]))


def test_each_kernel_has_the_same_signature_in_every_backend():
    reference = _exported("reference")
    for name in BACKENDS[1:]:
        kernels = _exported(name)
        for kernel, function in reference.items():
            assert inspect.signature(kernels[kernel]) == inspect.signature(function), (
                name, kernel, inspect.signature(kernels[kernel]), inspect.signature(function))


@pytest.mark.parametrize("name", BACKENDS)
def test_every_kernel_is_a_def_of_its_own_name_in_its_backend(name):
    """A plain module-level function, defined by ``def`` under the name it is exported as,
    in one of the backend's own modules, so ``grep "def <kernel>"`` in the backend finds it."""
    package = _package(name)
    folder = Path(package.__file__).parent
    for kernel, function in _exported(name).items():
        assert inspect.isfunction(function), (name, kernel, type(function))
        assert function.__name__ == kernel and function.__qualname__ == kernel, (
            name, kernel, function.__qualname__)  # not a lambda, not a closure
        assert function.__module__.startswith(package.__name__ + "."), (name, kernel,
                                                                        function.__module__)
        source = Path(inspect.getsourcefile(function))
        assert source.parent == folder, (name, kernel, source)
        assert re.search(rf"^def {kernel}\(", source.read_text(), re.MULTILINE), (name, kernel)
