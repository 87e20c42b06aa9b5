"""What ``import minidcn`` does to the thread pools (minidcn/threads.py): checked in fresh
processes, because the settings are read when numba's OpenMP library and BLAS load."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "GOTO_NUM_THREADS", "NUMBA_THREADING_LAYER",
                    "NUMBA_NUM_THREADS")

# NumPy first, as most scripts import it: its BLAS has loaded before minidcn can set anything.
SCRIPT = """
import json, os
import numpy as np
import minidcn
from minidcn import Tensor, functional as F
x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32), requires_grad=True)
F.group_norm(x, 2).sum().backward()  # numba's parallel loops: its OpenMP library loads here
settings = minidcn.threads.settings()
settings["environ"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
print(json.dumps(settings))
"""


def _run(**variables):
    """Run SCRIPT with no thread variables but ``variables``; (settings, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(variables, OMP_DISPLAY_ENV="TRUE",  # libgomp prints what it read when it loads
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr + done.stdout


def _libgomp_wait_policy(settings, printed):
    if settings["numba_threading_layer"] != "omp" or "OPENMP DISPLAY ENVIRONMENT" not in printed:
        pytest.skip("numba's threading layer is not GNU OpenMP here")
    return next(line.split("=")[1].strip(" '") for line in printed.splitlines()
                if line.strip().startswith("OMP_WAIT_POLICY"))


def test_a_plain_import_makes_numba_wait_passively_and_blas_single_threaded():
    settings, printed = _run()
    assert settings["environ"] == {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}
    assert settings["set_by_minidcn"] == settings["environ"]
    assert settings["blas_threads"] and set(settings["blas_threads"].values()) == {1}
    assert _libgomp_wait_policy(settings, printed) == "PASSIVE"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="BLAS caps its threads at the cores")
def test_the_users_own_variables_win():
    settings, printed = _run(OMP_WAIT_POLICY="ACTIVE", OPENBLAS_NUM_THREADS="2")
    assert settings["environ"] == {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "2"}
    assert settings["set_by_minidcn"] == {}
    assert 2 in settings["blas_threads"].values()  # NumPy's BLAS, as the user asked
    assert _libgomp_wait_policy(settings, printed) == "ACTIVE"


def test_omp_num_threads_alone_leaves_blas_to_the_user():
    settings, _ = _run(OMP_NUM_THREADS="2")
    assert settings["set_by_minidcn"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert settings["environ"]["OPENBLAS_NUM_THREADS"] is None


def test_user_environment_removes_only_what_minidcn_set(monkeypatch):
    from minidcn import threads

    monkeypatch.setattr(threads, "SET_BY_MINIDCN", {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"})
    given = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin", "OMP_NUM_THREADS": "3"}
    assert threads.user_environment(given) == {"PATH": "/bin", "OMP_NUM_THREADS": "3"}
    changed = {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_NUM_THREADS": "2"}  # values someone else chose since
    assert threads.user_environment(changed) == changed
