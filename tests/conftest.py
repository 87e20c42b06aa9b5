"""Test set-up shared by the whole suite.

* The cuda backend runs in numba's CUDA simulator unless ``MINIDCN_REAL_GPU=1`` is set, in
  which case the very same tests run on the real device.  The switch must happen before
  numba is imported, hence here, at the top of conftest.
* Hypothesis uses ``deadline=None``: the first call of a kernel includes its JIT compile.
* Tests parametrised over backends get the ``backend_name`` fixture; cuda cases carry the
  ``cuda`` mark (deselect with ``-m "not cuda"``).
"""

import os

if os.environ.get("MINIDCN_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "minidcn",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("minidcn")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs the cuda backend (simulated unless MINIDCN_REAL_GPU=1)")


BACKENDS = ["reference", "numba", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Each of the three backends in turn: "reference", "numba", "cuda"."""
    return request.param
