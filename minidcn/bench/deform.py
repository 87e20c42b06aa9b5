"""deform_conv2d benchmark: float32, B=8, C=64->64, 64x64, 3x3, padding 1, with mask (issue 3).

Rows, side by side:

* minidcn numba (the default host backend) and the reference (NumPy; slow, timed once);
* the cuda backend when a real GPU is present (never the simulator, whose timings mean nothing);
* ``torchvision.ops.deform_conv2d`` when torchvision imports;
* ``torch.nn.functional.conv2d`` on the same shape when torch imports: what a plain
  convolution costs, for scale.

"forward" runs without building a graph; "fwd+bwd" runs the forward that records the graph
and the backward for input, offset, mask, weight and bias.  The speed-up columns are
torchvision's time / the row's time.  Targets (issue 3): numba at least 5x faster than
torchvision in forward and 10x in forward+backward.  numba and its peers are timed back to
back and the slow reference last, so that other work on the machine disturbs them alike;
still, the ratios are only meaningful on an otherwise idle machine (numba's two threads wait
for each other at every parallel loop, so it suffers more than single-threaded code when
the cores are shared), so the table ends with the load average.  On a busy machine
``OPENBLAS_NUM_THREADS=1`` can be faster: OpenBLAS's worker threads keep spinning after a
GEMM and compete with numba's threads for the cores.

Last, the peak memory of one numba forward+backward at B=32, C=128->128, 64x64, measured in a
fresh subprocess (the column buffer is chunked, see ``backends/numba_cpu/deform_conv.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from .timing import best_time, optional, print_table, rng_array

BATCH, C_IN, C_OUT, SIZE, KERNEL, PADDING = 8, 64, 64, 64, 3, 1
TARGET_FORWARD, TARGET_FULL = 5.0, 10.0  # numba at least this many times faster than torchvision
MEMORY_SHAPE = dict(batch=32, c_in=128, c_out=128, size=64)


def _arrays(batch=BATCH, c_in=C_IN, c_out=C_OUT, size=SIZE):
    """x, offset, mask, weight, bias, grad_y (float32; offsets of a few pixels)."""
    points = KERNEL * KERNEL
    out = size + 2 * PADDING - KERNEL + 1
    x = rng_array((batch, c_in, size, size), seed=0)
    offset = 2 * rng_array((batch, 2 * points, out, out), seed=1)
    mask = np.random.default_rng(2).uniform(0, 1, (batch, points, out, out)).astype(np.float32)
    weight = rng_array((c_out, c_in, KERNEL, KERNEL), seed=3) * 0.05
    bias = rng_array((c_out,), seed=4)
    grad_y = rng_array((batch, c_out, out, out), seed=5)
    return x, offset, mask, weight, bias, grad_y


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    cuda = optional("numba.cuda")
    return cuda is not None and cuda.is_available()


def _minidcn_times(backend_name: str, device: str, repeat: int, warmup: int = 1):
    import minidcn
    from minidcn import Tensor, functional as F

    x, offset, mask, weight, bias, grad_y = (Tensor(a).to(device) for a in _arrays())
    inputs = (x, offset, mask, weight, bias)
    for t in inputs:
        t.requires_grad_()

    def forward():
        with minidcn.no_grad():
            out = F.deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask)
        out.to("cpu")  # waits for the device, if any

    def forward_backward():
        for t in inputs:
            t.grad = None
        F.deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask).backward(grad_y)
        x.grad.to("cpu")

    with minidcn.backend(backend_name):
        return (best_time(forward, repeat, warmup), best_time(forward_backward, repeat, warmup))


def _torch_times(torch, repeat: int, deformable: bool):
    x, offset, mask, weight, bias, grad_y = (torch.from_numpy(a) for a in _arrays())
    inputs = (x, offset, mask, weight, bias) if deformable else (x, weight, bias)
    for t in inputs:
        t.requires_grad_()
    if deformable:
        from torchvision.ops import deform_conv2d

        def op():
            return deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask)
    else:
        def op():
            return torch.nn.functional.conv2d(x, weight, bias, padding=PADDING)

    def forward():
        with torch.no_grad():
            op()

    def forward_backward():
        for t in inputs:
            t.grad = None
        op().backward(grad_y)

    return best_time(forward, repeat), best_time(forward_backward, repeat)


_MEMORY_SCRIPT = """
import json, sys, tracemalloc
from minidcn import Tensor, functional as F
from minidcn.bench.deform import _arrays, PADDING

def status(field):  # kB from /proc/self/status: VmRSS now, VmHWM the peak since exec or reset
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024

def forward_backward(x, offset, mask, weight, bias, grad_y):
    x, offset, mask, weight, bias = (Tensor(a, requires_grad=True) for a in (x, offset, mask, weight, bias))
    F.deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask).backward(Tensor(grad_y))

forward_backward(*_arrays(batch=1, c_in=4, c_out=4, size=8))  # JIT compile (or load the cache)
arrays = _arrays(**json.loads(sys.argv[1]))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
rss_before = status("VmRSS")
tracemalloc.start()
forward_backward(*arrays)
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps(dict(rss_before=rss_before, rss_peak=status("VmHWM"), traced_peak=traced_peak,
                      inputs=sum(a.nbytes for a in arrays))))
"""


def peak_memory(batch, c_in, c_out, size) -> dict:
    """Memory of one numba forward+backward, measured in a fresh Python process (Linux).

    Returns bytes: ``inputs`` (x, offset, mask, weight, bias, grad_y), ``traced_peak`` (the
    most memory NumPy held at once during forward+backward beyond what existed before, by
    tracemalloc: outputs, gradients, chunk buffers), ``rss_before`` (the process's resident
    size just before the call) and ``rss_peak`` (its peak resident size during the call).
    """
    shape = json.dumps(dict(batch=batch, c_in=c_in, c_out=c_out, size=size))
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, shape], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"peak_memory: the measuring process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(repeat: int = 5) -> None:
    numba = ("minidcn numba", *_minidcn_times("numba", "cpu", repeat))
    peers = []  # timed right after numba, so that both see the same load on the machine
    torch, torchvision = optional("torch"), optional("torchvision")
    baseline = None
    if torch is not None and torchvision is not None:
        baseline = f"torchvision {torchvision.__version__.split('+')[0]} deform_conv2d"
        peers.append((baseline, *_torch_times(torch, repeat, deformable=True)))
    if torch is not None:
        peers.append((f"torch {torch.__version__.split('+')[0]} conv2d ({torch.get_num_threads()} thr)",
                      *_torch_times(torch, repeat, deformable=False)))
    rows = [numba, ("minidcn reference (NumPy, 1 run)", *_minidcn_times("reference", "cpu", 1, warmup=0))]
    if _real_gpu():
        rows.append(("minidcn cuda", *_minidcn_times("numba", "cuda", repeat)))
    rows += peers
    title = (f"deform_conv2d float32, B={BATCH}, C={C_IN}->{C_OUT}, {SIZE}x{SIZE}, "
             f"{KERNEL}x{KERNEL}, padding {PADDING}, with mask")
    print_table(title, rows, baseline=baseline)
    if baseline is not None:
        tv = dict((r[0], r) for r in rows)[baseline]
        for label, column, target in (("forward", 1, TARGET_FORWARD), ("fwd+bwd", 2, TARGET_FULL)):
            ratio = tv[column] / rows[0][column]
            verdict = "met" if ratio >= target else "MISSED"
            print(f"  numba {label}: {ratio:.2f}x faster than torchvision (target >= {target:.0f}x: {verdict})")
    if torch is not None:
        conv = rows[-1]
        print(f"  numba / torch conv2d time: forward {rows[0][1] / conv[1]:.2f}, "
              f"fwd+bwd {rows[0][2] / conv[2]:.2f}")
    if not os.path.exists("/proc/self/status"):
        print("\n  numba peak memory: not measured (reads /proc/self/status, Linux only)")
        return
    mem = peak_memory(**MEMORY_SHAPE)
    mib = 2.0**20
    print(f"\n  numba fwd+bwd peak memory, B={MEMORY_SHAPE['batch']}, C={MEMORY_SHAPE['c_in']}->"
          f"{MEMORY_SHAPE['c_out']}, {MEMORY_SHAPE['size']}x{MEMORY_SHAPE['size']} float32: "
          f"NumPy peak {mem['traced_peak'] / mib:.0f} MiB beyond the inputs "
          f"({mem['inputs'] / mib:.0f} MiB); process resident size {mem['rss_before'] / mib:.0f} MiB "
          f"before the call, peak {mem['rss_peak'] / mib:.0f} MiB during it")
