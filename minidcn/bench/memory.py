"""Peak memory of one numba deform_conv2d forward+backward, measured in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .runner import PACKAGE_ROOT

_SCRIPT = """
import json, sys, tracemalloc
from minidcn import Tensor, functional as F
from minidcn.bench.sections.deform_conv2d import arrays, PADDING

def status(field):  # kB from /proc/self/status: VmRSS now, VmHWM the peak since exec or reset
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024

def forward_backward(x, offset, mask, weight, bias, grad_y):
    x, offset, mask, weight, bias = (Tensor(a, requires_grad=True) for a in (x, offset, mask, weight, bias))
    F.deform_conv2d(x, offset, weight, bias, padding=PADDING, mask=mask).backward(Tensor(grad_y))

forward_backward(**arrays(1, 4, 4, 8))  # JIT compile (or load the cache)
data = arrays(*json.loads(sys.argv[1]))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
rss_before = status("VmRSS")
tracemalloc.start()
forward_backward(**data)
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps(dict(rss_before=rss_before, rss_peak=status("VmHWM"), traced_peak=traced_peak,
                      inputs=sum(a.nbytes for a in data.values()))))
"""


def peak_memory(batch, c_in, c_out, size) -> dict:
    """Memory of one numba forward+backward, measured in a fresh Python process (Linux).

    Returns bytes: ``inputs`` (x, offset, mask, weight, bias, grad_y), ``traced_peak`` (the
    most memory NumPy held at once during forward+backward beyond what existed before, by
    tracemalloc: outputs, gradients, chunk buffers), ``rss_before`` (the process's resident
    size just before the call) and ``rss_peak`` (its peak resident size during the call).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    shape = json.dumps([batch, c_in, c_out, size])
    done = subprocess.run([sys.executable, "-c", _SCRIPT, shape], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"peak_memory: the measuring process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_memory_lines(batch, c_in, c_out, size) -> list:
    """The benchmark's report of ``peak_memory`` (or why it was not measured)."""
    if not os.path.exists("/proc/self/status"):
        return ["numba peak memory: not measured (reads /proc/self/status, Linux only)"]
    mem, mib = peak_memory(batch, c_in, c_out, size), 2.0**20
    return [f"numba fwd+bwd peak memory, B={batch}, C={c_in}->{c_out}, {size}x{size} float32: NumPy "
            f"peak {mem['traced_peak'] / mib:.0f} MiB beyond the inputs ({mem['inputs'] / mib:.0f} MiB);",
            f"process resident size {mem['rss_before'] / mib:.0f} MiB before the call, peak "
            f"{mem['rss_peak'] / mib:.0f} MiB during it"]
