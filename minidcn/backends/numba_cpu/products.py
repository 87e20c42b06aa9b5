"""The convolutions' matrix products, cut into pieces of rows that run on several threads.

The column-matrix convolutions (``conv.py``, ``deform_conv.py``) spend about half of their
time in three BLAS products per chunk of images, over a tall matrix of rows (one per output
pixel, M of them):

    product      (M × O) = rows (M × K) @ w (K × O)
    grad_w       (K × O) = Σ_pixels rowsᵀ (K × M) @ grad_product (M × O)
    grad_rows    (M × K) = grad_product (M × O) @ wᵀ (O × K)

minidcn runs BLAS on one thread (``minidcn/threads.py``: BLAS threads that spin while numba's
loops run, and the other way round, made everything slower on two cores).  So that the
products still use every core, the M rows are cut into pieces of ``PIECE_ROWS`` and the
pieces are multiplied on ``numba.get_num_threads()`` Python threads at once: NumPy releases
the GIL inside a product, and the threads sleep (they do not spin) between calls.

Bitwise reproducible for any number of threads: the pieces depend only on M, never on the
number of threads.  Each piece of ``product`` and ``grad_rows`` is computed by one BLAS call
whatever thread runs it, and grad_w is the sum of one partial product per piece, added in
piece order.  Where BLAS itself runs on several threads (you set ``OPENBLAS_NUM_THREADS`` or
``OMP_NUM_THREADS`` above 1), the pieces run one after the other on the calling thread, and
BLAS spreads each of them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["matmul_rows", "sum_of_products"]

PIECE_ROWS = 2048
"""Rows per piece: enough for BLAS to run near its peak (pieces of 1024 rows ran up to 23%
slower per row than pieces of 8192, pieces of 2048 up to 14%), few enough that a chunk of
images gives each of two threads work."""

_pool = None
_pool_lock = threading.Lock()


def _reset_after_fork():
    global _pool
    _pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_reset_after_fork)


def _blas_is_single_threaded() -> bool:
    """True unless the environment asks BLAS for several threads (then BLAS splits the work)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name)
        if value is not None:
            return value.strip() == "1"
    return False


def _pieces(rows: int) -> list:
    """[(start, stop), ...]: ceil(rows / PIECE_ROWS) pieces of nearly equal size."""
    count = max(1, -(-rows // PIECE_ROWS))
    bounds = [rows * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _run(task, pieces) -> None:
    """task(i, start, stop) for every piece i: on the calling thread, or spread over threads."""
    workers = min(numba.get_num_threads(), len(pieces)) if _blas_is_single_threaded() else 1
    if workers <= 1:
        for i, (start, stop) in enumerate(pieces):
            task(i, start, stop)
        return
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS,
                                       thread_name_prefix="minidcn-products")
        pool = _pool

    def worker(first):  # pieces first, first + workers, ...: each written by this thread only
        for i in range(first, len(pieces), workers):
            task(i, *pieces[i])

    for future in [pool.submit(worker, first) for first in range(workers)]:
        future.result()


def matmul_rows(a, b, out) -> None:
    """out = a @ b for stacked matrices a (..., M, K), b (..., K, N), out (..., M, N), by
    pieces of the M rows (each piece is one BLAS call)."""
    def task(i, start, stop):
        np.matmul(a[..., start:stop, :], b, out=out[..., start:stop, :])

    _run(task, _pieces(a.shape[-2]))


def sum_of_products(a, b):
    """Σ over the M rows of aᵀ @ b, for a (..., M, K) and b (..., M, N): (..., K, N), as the
    sum, in piece order, of one product per piece of rows."""
    pieces = _pieces(a.shape[-2])
    partial = np.empty((len(pieces),) + a.shape[:-2] + (a.shape[-1], b.shape[-1]), a.dtype)

    def task(i, start, stop):
        np.matmul(a[..., start:stop, :].swapaxes(-1, -2), b[..., start:stop, :], out=partial[i])

    _run(task, pieces)
    total = partial[0].copy()
    for piece in partial[1:]:
        total += piece
    return total
