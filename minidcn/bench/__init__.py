"""``minidcn bench [section ...]``: minidcn's kernels timed beside torch and torchvision.

How the numbers are taken (``runner.py``), and why:

* **One process per implementation.**  Each implementation (minidcn numba, minidcn
  reference, torch, torchvision) runs in its own worker process (``worker.py``), which
  imports only its own library.  In one process the thread pools of torch (OpenMP), numba
  and OpenBLAS spin against each other, and the same code measured anywhere from 0.3x to 2x
  its own speed from one run to the next.
* **Alternating rounds.**  The workers take turns: round 1 times every implementation once
  (``--repeat`` calls of the forward, then of the forward+backward), round 2 again in a
  rotated order, and so on (``--rounds``).  A busy spell on a shared machine then falls on
  all of them alike.
* **Minimum and median** of every timed call are printed, and the speed-up against the
  case's peer (its time / the row's time, from the medians).  The load average before and
  after goes under each table: timings on a busy machine are not comparable to quiet ones.
* **Thread settings as the user gives them.**  Every worker gets the environment the user
  started the benchmark with (not what ``import minidcn`` set in the runner); minidcn's
  workers then arrange their threads as any minidcn script does (``minidcn/threads.py``),
  torch's as torch does.  ``--env "NAME=VALUE ..."`` adds rows of minidcn run with those
  variables, and ``--busy K`` keeps K endless loops running beside the workers: the
  default-against-hand-tuned comparison, on a quiet or a busy machine.
* **Agreement first.**  Before any timing, each worker writes its output and gradients
  for the same inputs, and the runner compares them; a case whose implementations
  disagree is not timed.

A section is one small module in ``sections/``, found by its file name; it defines
``cases(smoke)``, returning ``common.Case`` objects (see ``sections/group_norm.py`` for
the shortest).  Modules of this package import only the standard library and NumPy at
the top: a worker loads them without importing minidcn.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

SECTIONS_DIR = Path(__file__).resolve().parent / "sections"


def section_names() -> list[str]:
    """The sections, by module name, in the order each module's ``ORDER`` gives."""
    import importlib

    names = [m.name for m in pkgutil.iter_modules([str(SECTIONS_DIR)]) if not m.name.startswith("_")]
    modules = {name: importlib.import_module(f"{__name__}.sections.{name}") for name in names}
    return sorted(names, key=lambda name: (modules[name].ORDER, name))
