"""Every cuda kernel compiles for a real GPU, not only runs in the simulator.

The simulator executes kernels as Python and accepts code that the CUDA compiler rejects
(for example two-argument ``max``/``min``, broken on the CUDA target since numba 0.66:
numba issue 10753).  ``real_gpu_compile.py`` records the argument types of every kernel
launch while all public ops run in the simulator, then compiles each to PTX with the
simulator off.  That needs libnvvm from the CUDA toolkit, not a GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda


def _nvvm_available() -> bool:
    probe = "from numba.cuda.cudadrv import nvvm; nvvm.NVVM()"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


@pytest.mark.skipif(not _nvvm_available(), reason="libnvvm (CUDA toolkit) not found: cannot compile PTX")
def test_every_cuda_kernel_compiles_to_ptx_for_a_real_gpu():
    script = Path(__file__).with_name("real_gpu_compile.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled" in result.stdout
