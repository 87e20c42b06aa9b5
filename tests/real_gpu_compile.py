"""Does every cuda kernel compile for a real GPU, not only run in the simulator?

The simulator runs kernels as Python, so it accepts code that nvvm rejects (``np.exp`` in
a kernel, say).  This script closes that gap in two steps:

1. ``record``: with ``NUMBA_ENABLE_CUDASIM=1``, run every public op on cuda tensors (float32
   and float64, forward and backward) while recording each kernel launch's argument types;
   fail if a kernel defined in ``minidcn.backends.cuda`` (the op kernels) or
   ``minidcn.device`` (the device array runtime) was never launched.
2. ``compile``: with the simulator off, compile every recorded (kernel, types) pair to PTX
   for compute capability 7.5 with ``numba.cuda.compile_ptx``.  No GPU is needed for that,
   only libnvvm from the CUDA toolkit.

Run by ``tests/test_cuda_compiles.py``; by hand: ``python tests/real_gpu_compile.py``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

CC = (7, 5)


def record(path: str) -> None:
    import numba
    import numpy as np
    from numba.cuda.simulator import kernel as sim_kernel

    launches = set()
    original_call = sim_kernel.FakeCUDAKernel.__call__

    def recording_call(self, *args):
        if not self._device:
            types = tuple(numba.typeof(getattr(a, "_ary", a)) for a in args)
            launches.add((self.fn.__module__, self.fn.__name__, types))
        return original_call(self, *args)

    sim_kernel.FakeCUDAKernel.__call__ = recording_call
    for dtype in (np.float32, np.float64):
        _workload(dtype)
    missing = sorted(set(_all_kernels()) - {(m, n) for m, n, _ in launches})
    if missing:
        raise SystemExit(f"the workload never launched these kernels: {missing}")
    with open(path, "wb") as f:
        pickle.dump(sorted(launches, key=repr), f)
    print(f"recorded {len(launches)} kernel signatures")


def _all_kernels():
    """(module, name) of every non-device kernel defined in minidcn.backends.cuda or minidcn.device."""
    import importlib
    import pkgutil

    from numba.cuda.simulator.kernel import FakeCUDAKernel

    import minidcn.backends.cuda
    import minidcn.device

    for pkg in (minidcn.backends.cuda, minidcn.device):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for name, obj in vars(module).items():
                if isinstance(obj, FakeCUDAKernel) and not obj._device and obj.fn.__module__ == module.__name__:
                    yield module.__name__, obj.fn.__name__


def _workload(dtype) -> None:
    """Forward and backward of every public op on small cuda tensors."""
    import numpy as np

    import minidcn.functional as F
    from minidcn import Tensor

    rng = np.random.default_rng(0)

    def t(*shape, scale=1.0):
        data = (scale * rng.standard_normal(shape)).astype(dtype)
        return Tensor(data, requires_grad=True).to("cuda")

    def grad_of(out):
        out.backward(Tensor(np.ones(out.shape, dtype=dtype)).to("cuda"))

    x = t(2, 4, 6, 6)
    w = t(6, 2, 3, 3)
    b = t(6)
    grad_of(F.conv2d(x, w, b, stride=1, padding=1, groups=2))
    grad_of(F.max_pool2d(x, 2))
    grad_of(F.avg_pool2d(x, 3, stride=2, padding=1))
    grad_of(F.bilinear_sample(x, t(2, 5, 2, scale=3.0)))
    offset = t(2, 2 * 2 * 9, 6, 6, scale=0.7)
    mask = t(2, 2 * 9, 6, 6)
    grad_of(F.deform_conv2d(x, offset, w, b, padding=1, mask=mask))
    grad_of(F.deform_conv2d(x, offset, w, None, padding=1))
    rois = np.array([[0, 0.5, 0.5, 4.5, 5.0], [1, 1.0, 0.0, 5.5, 3.5]], dtype=dtype)
    grad_of(F.roi_align(x, rois, (2, 2), sampling_ratio=2, aligned=True))
    grad_of(F.roi_pool(x, rois, (2, 2)))
    roi_offset = t(2, 2, 2, 2, scale=0.3)
    grad_of(F.deform_roi_pool(x, rois, roi_offset, (2, 2), mask=t(2, 1, 2, 2)))
    grad_of(F.deform_roi_pool(x, rois, roi_offset, (2, 2)))
    grad_of(F.deform_ps_roi_pool(t(2, 8, 6, 6), rois, roi_offset, (2, 2)))
    x_last = t(2, 5, 6, 4)  # channels-last (N, H, W, group * D)
    grad_of(F.dcnv3(x_last, t(2, 5, 6, 2 * 9 * 2, scale=0.7), t(2, 5, 6, 2 * 9), group=2))
    grad_of(F.dcnv4(x_last, t(2, 5, 6, 2 * 3 * 8 + 2, scale=0.7), group=2, remove_center=True,
                    softmax=True))
    grad_of(F.group_norm(x, 2, t(4), t(4)))
    running = [Tensor(np.zeros(4, dtype=dtype)).to("cuda"), Tensor(np.ones(4, dtype=dtype)).to("cuda")]
    grad_of(F.batch_norm(x, running[0], running[1], t(4), t(4), training=True))
    grad_of(F.batch_norm(x, running[0], running[1], t(4), t(4), training=False))
    a, m = t(3, 4), t(4, 5)
    grad_of(F.cross_entropy(F.linear(a, m.T).tanh() @ t(5, 3), [0, 2, 1]))
    grad_of((a[1:, ::2].exp() / (a[1:, :2].sigmoid() + 1)).relu().sum(1) ** 2)
    grad_of(a[[0, 0, 2]] @ t(4))
    grad_of(F.log_softmax(a, 1).mean(0))
    d = a.data  # CudaArray's NumPy surface beyond what the ops use
    np.where(d > 0, d, 2 * d)


def compile_all(path: str) -> None:
    import importlib
    import types as pytypes

    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability while they are
    # compiled into a kernel; with no GPU attached, answer with the target's.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
    with open(path, "rb") as f:
        launches = pickle.load(f)
    failures = []
    for module, name, types in launches:
        kernel = getattr(importlib.import_module(module), name)
        try:
            cuda.compile_ptx(kernel.py_func, types, cc=CC)
        except Exception as err:  # noqa: BLE001 - every failure is reported below
            failures.append(f"{module}.{name}{types}: {str(err).splitlines()[0]}")
    if failures:
        raise SystemExit("kernels that do not compile for a real GPU:\n" + "\n".join(failures))
    print(f"compiled {len(launches)} kernel signatures to PTX (cc {CC[0]}.{CC[1]})")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.pkl")
        for step, sim in (("record", "1"), ("compile", "0")):
            env = dict(os.environ, NUMBA_ENABLE_CUDASIM=sim)
            subprocess.run([sys.executable, __file__, step, path], env=env, check=True)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        main()
    elif sys.argv[1] == "record":
        record(sys.argv[2])
    else:
        compile_all(sys.argv[2])
