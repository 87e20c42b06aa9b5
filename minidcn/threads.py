"""How minidcn arranges its threads, so that a plain ``import minidcn`` script is fast.

Two thread pools share the cores in a minidcn process: numba's, which runs the parallel
loops of the numba backend (on Linux through OpenMP, GNU's libgomp), and the BLAS
library's (OpenBLAS for NumPy's wheels), which runs the matrix products that convolutions
hand to ``np.matmul``.  Left to their defaults, both keep their threads **spinning** after
each piece of work, waiting for the next: libgomp for about 300 000 polls, OpenBLAS for
about 2**28 processor cycles.  On a two-core laptop the spinning threads of one pool then
take the cores that the other pool's threads need, and every spell of other work on the
machine makes it worse.  Measured on two cores shared with other work (load average 10 to
30), medians of forward+backward, the defaults against single-threaded BLAS with passive
waiting: one SGD step of a small DCNv2 network 3578 ms against 272 ms, conv2d
(8, 64, 32, 32) 2402 ms against 98 ms, group_norm 68 ms against 22 ms, deform_conv2d
1133 ms against 1056 ms.

So ``import minidcn`` (this module runs first) sets, **each only when you have not**:

* ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ``: libgomp reads it once, when it loads,
  which is at numba's first parallel loop (not at import).  numba's threads then sleep as
  soon as a loop ends.  It has no effect if libgomp was loaded before (by another library
  that uses OpenMP, or an earlier numba parallel loop); ``settings()`` shows what holds.
* **BLAS on one thread**: ``OPENBLAS_NUM_THREADS=1`` in ``os.environ``, read by an
  OpenBLAS that loads later, and, for the BLAS libraries already loaded (NumPy's, when
  NumPy was imported before minidcn), ``threadpoolctl.threadpool_limits(1, "blas")``.  The
  parallelism stays with numba's loops.  This holds for the whole process, your own NumPy
  products included.  If you set any of ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, ``BLIS_NUM_THREADS`` or ``GOTO_NUM_THREADS``, minidcn leaves BLAS
  alone.

Variables put into ``os.environ`` are inherited by child processes, as yours would be;
``SET_BY_MINIDCN`` lists them (the benchmark's workers start without them).

To override: set the variable yourself, in the shell or in ``os.environ`` before
``import minidcn`` (yours always wins); after the import, ``threadpoolctl`` changes BLAS's
threads (``threadpool_limits(2, "blas")``) and ``numba.set_num_threads`` numba's.
``NUMBA_NUM_THREADS`` and ``NUMBA_THREADING_LAYER`` are numba's own and minidcn does not set
them.  On a heavily loaded machine ``NUMBA_THREADING_LAYER=workqueue`` was faster still
(training step 42 ms, group_norm 3.4 ms, at load 15), but that layer aborts the process
when two Python threads run parallel loops at once, so minidcn does not choose it for you.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"
BLAS_THREADS = "OPENBLAS_NUM_THREADS"
# Any of these, set by the user, says how many threads BLAS should use.
BLAS_VARIABLES = (BLAS_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                  "GOTO_NUM_THREADS")

SET_BY_MINIDCN: dict[str, str] = {}
"""The variables that ``import minidcn`` put into ``os.environ``, with their values."""


def _arrange() -> None:
    """Set the variables the user left unset, then limit the BLAS libraries already loaded."""
    if WAIT_POLICY not in os.environ:
        SET_BY_MINIDCN[WAIT_POLICY] = os.environ[WAIT_POLICY] = "PASSIVE"
    if not any(name in os.environ for name in BLAS_VARIABLES):
        SET_BY_MINIDCN[BLAS_THREADS] = os.environ[BLAS_THREADS] = "1"
        import numpy  # noqa: F401  loads NumPy's BLAS now, reading the variable, if not yet loaded
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")  # a BLAS loaded before minidcn read no variable


def user_environment(environ=None) -> dict:
    """``environ`` (default ``os.environ``) without the variables minidcn set: the
    environment as the user gave it, for processes that should not inherit minidcn's
    settings (the benchmark's torch workers)."""
    environ = dict(os.environ if environ is None else environ)
    for name, value in SET_BY_MINIDCN.items():
        if environ.get(name) == value:
            del environ[name]
    return environ


def settings() -> dict:
    """What holds now: numba's threading layer (None before its first parallel loop) and
    thread count, the wait policy libgomp was given, and each BLAS library's threads."""
    import numba
    from threadpoolctl import threadpool_info

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel loop ran yet
        layer = None
    blas = {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    return {"numba_threading_layer": layer, "numba_threads": numba.get_num_threads(),
            WAIT_POLICY: os.environ.get(WAIT_POLICY), "blas_threads": blas,
            "set_by_minidcn": dict(SET_BY_MINIDCN)}


_arrange()
