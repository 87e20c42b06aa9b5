"""What the lessons share: where they are, the quick flag, the figures folder, ``check``.

A lesson is a script in ``lessons/`` (shipped inside the package as ``minidcn.lessons``).
``minidcn lesson N`` runs it in a fresh Python process with two environment variables:

* ``MINIDCN_QUICK=1`` shrinks data and epochs (``--quick``);
* ``MINIDCN_FIGURES=DIR`` is where its figures go (``--out DIR``).

Run by hand (``python lessons/01_autograd.py``), a lesson writes to the repository's
``figures/`` when it sits in a checkout, or to ``./figures`` otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import minidcn

__all__ = ["lessons_dir", "lesson_files", "lesson_summary", "default_figures_dir", "quick",
           "figures_dir", "save_figure", "check"]

# Thread settings a lesson process starts with (unless the user set them).  numba's OpenMP
# workers and OpenBLAS's threads both busy-wait after a parallel region; on two cores each
# then steals the other's core, and a small training step measured 146-320 ms instead of
# 5-8 ms.  Both must be set before NumPy and numba load, so ``minidcn lesson`` sets them in
# the lesson's environment.
THREAD_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}

LESSON_NAME = re.compile(r"^(\d\d)_\w+\.py$")
LEADING_NUMBER = re.compile(r"^(lesson\s*)?\d+\s*[.:-]?\s*", re.IGNORECASE)


def lessons_dir() -> Path:
    """The folder holding the lesson scripts.

    Installed, that is the package ``minidcn.lessons``; in a checkout that was not installed,
    the ``lessons/`` folder beside the ``minidcn`` package.
    """
    spec = importlib.util.find_spec("minidcn.lessons")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(minidcn.__file__).resolve().parent.parent / "lessons"


def lesson_files(folder: Path | None = None) -> dict[int, Path]:
    """``{number: path}`` for every ``NN_name.py`` in the lessons folder, in order."""
    folder = lessons_dir() if folder is None else folder
    found = {}
    for path in sorted(folder.glob("*.py")):
        match = LESSON_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def lesson_summary(path: Path) -> str:
    """The first line of a lesson's first markdown cell (its title), less heading marks and number."""
    in_markdown = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            if in_markdown:
                break
            in_markdown = "[markdown]" in line
        elif in_markdown:
            text = LEADING_NUMBER.sub("", line[1:].strip().lstrip("#").strip())
            if text:
                return text
    return "(no summary: the lesson has no markdown cell)"


def default_figures_dir(lesson_file=None) -> Path:
    """``figures/`` of the checkout, else ``./figures``.

    The checkout is found from the lesson file when given, else from the ``minidcn``
    package itself, so a lesson opened as a notebook (where ``__file__`` does not exist)
    writes to the same place as the script.
    """
    anchor = Path(lesson_file) if lesson_file is not None else Path(minidcn.__file__).parent
    repo_figures = anchor.resolve().parent.parent / "figures"
    return repo_figures if repo_figures.is_dir() else Path.cwd() / "figures"


def quick() -> bool:
    """True when the lesson should run its short version (``MINIDCN_QUICK=1``)."""
    return os.environ.get("MINIDCN_QUICK", "0") not in ("", "0")


def figures_dir(lesson_file=None) -> Path:
    """Where lessons write figures (``MINIDCN_FIGURES`` if set); created if needed."""
    given = os.environ.get("MINIDCN_FIGURES")
    folder = Path(given) if given else default_figures_dir(lesson_file)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, name: str, lesson_file=None) -> Path:
    """Save a matplotlib figure as ``name`` in the figures folder, close it, print the path."""
    import matplotlib.pyplot as plt

    path = figures_dir(lesson_file) / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def check(condition, message: str) -> None:
    """A lesson's assertion: stop with ``message`` if ``condition`` is false, else print it."""
    if not condition:
        raise AssertionError(f"lesson check failed: {message}")
    print(f"  ok: {message}")
