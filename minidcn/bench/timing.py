"""Timing and table printing shared by the benchmark sections."""

from __future__ import annotations

import importlib
import os
import time

import numpy as np


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` runs, after ``warmup`` runs.

    The best (not the mean) is the least disturbed by other work on the machine; the
    warm-up run absorbs JIT compilation.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"best_time: repeat must be an int of at least 1, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"best_time: warmup must be an int of at least 0, got {warmup!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_over_rounds(ops: dict, repeat: int, rounds: int = 3) -> dict:
    """{name: [best forward s, best fwd+bwd s]} for ``ops`` = {name: (forward, forward_backward)}.

    Rounds interleave the implementations, so that a busy spell on a shared machine does not
    fall on one of them only; each entry keeps its best time over all rounds.
    """
    best = {name: [float("inf"), float("inf")] for name in ops}
    for _ in range(rounds):
        for name, fns in ops.items():
            best[name] = [min(b, best_time(fn, repeat)) for b, fn in zip(best[name], fns)]
    return best


def optional(module: str):
    """Import ``module`` if installed, else None (peers are optional)."""
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None


def print_table(title: str, rows, baseline: str | None = None) -> None:
    """Print rows of (name, forward s, forward+backward s); None means not measured.

    With ``baseline`` (a row name), each row also shows baseline time / row time, so a
    number above 1 means the row is faster than the baseline.  The last line gives the
    load average: timings taken while other work runs are not comparable (numba's and
    BLAS's threads wait for each other, and spin while they wait).
    """
    print(f"\n{title}")
    ref = dict((r[0], r) for r in rows).get(baseline)
    head = f"  {'implementation':<34}{'forward ms':>12}{'fwd+bwd ms':>12}"
    if ref:
        head += f"{'speed-up fwd':>14}{'fwd+bwd':>10}"
    print(head)
    for name, fwd, full in rows:
        line = f"  {name:<34}{_ms(fwd):>12}{_ms(full):>12}"
        if ref:
            line += f"{_ratio(ref[1], fwd):>14}{_ratio(ref[2], full):>10}"
        print(line)
    print(f"  1-minute load average {load_average()} on {os.cpu_count()} cores")


def load_average() -> str:
    """The 1-minute load average: how busy the machine was while timing (Unix only)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def _ms(t):
    return "-" if t is None else f"{1e3 * t:.2f}"


def _ratio(base, t):
    return "-" if base is None or t is None else f"{base / t:.2f}x"


def rng_array(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
