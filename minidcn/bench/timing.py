"""Timing helpers: the best of a few runs (lesson 02), and the summary of a bench row."""

from __future__ import annotations

import os
import statistics
import time


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
    return min(timed_calls(fn, repeat))


def timed_calls(fn, repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn()``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def min_median(times) -> tuple[float, float] | None:
    """(minimum, median) of a list of times, None for no times."""
    return (min(times), statistics.median(times)) if times else None


def load_average() -> str:
    """The 1-minute load average: how busy the machine was while timing (Unix only)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"
