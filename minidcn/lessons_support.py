"""What the lessons share: where they are, the quick flag, the output folder, figures, ``check``.

A lesson is a script in ``lessons/`` (shipped inside the package as ``minidcn.lessons``),
written in jupytext's percent format, so it runs the same three ways: ``minidcn lesson N``
(a fresh Python process), ``python lessons/NN_name.py``, or opened as a Jupyter notebook.
Two environment variables steer it:

* ``MINIDCN_QUICK=1`` shrinks data and epochs (``--quick``);
* ``MINIDCN_FIGURES=DIR`` is where its figures (and anything it keeps) go (``--out DIR``).

Without ``MINIDCN_FIGURES`` a run writes to a scratch folder, ``<tmp>/minidcn/quick`` or
``<tmp>/minidcn/full`` (:func:`default_output_dir`), never into the checkout: the committed
``figures/`` change only when named, ``minidcn tour --out figures``.  In a script a saved
figure is closed; in a notebook it is also shown inline.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

import minidcn

__all__ = ["lessons_dir", "lesson_files", "lesson_summary", "default_output_dir", "quick",
           "prepare_output_dir", "figures_dir", "save_figure", "save_gif", "check",
           "defined_at"]

# What a quick run's figure says in its title, so it is never mistaken for the lesson's result.
QUICK_TITLE = "quick run"
QUICK_NOTE = "MINIDCN_QUICK=1: less data, fewer epochs"

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


def default_output_dir(quick_run: bool) -> Path:
    """The scratch folder a run writes to when no folder is named: ``<tmp>/minidcn/quick``
    for a quick run, ``<tmp>/minidcn/full`` otherwise (``<tmp>`` is ``tempfile.gettempdir()``).

    Never the checkout's ``figures/``: those are regenerated only when asked for by name.
    """
    return Path(tempfile.gettempdir()) / "minidcn" / ("quick" if quick_run else "full")


def quick() -> bool:
    """True when the lesson should run its short version (``MINIDCN_QUICK=1``)."""
    return os.environ.get("MINIDCN_QUICK", "0") not in ("", "0")


def prepare_output_dir(folder) -> Path:
    """Create ``folder`` if missing and make sure a file can be written in it; return it.

    Raises OSError (naming the folder) when it cannot be created or written to, so a run can
    refuse a bad folder before it computes anything.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"cannot write to the folder {str(folder)!r}: {error}") from error
    return folder


def figures_dir() -> Path:
    """Where this run writes its figures and anything it keeps: ``MINIDCN_FIGURES`` if set
    (a relative path is taken from the current folder), else :func:`default_output_dir`.
    Created if needed."""
    given = os.environ.get("MINIDCN_FIGURES")
    return prepare_output_dir(Path(given) if given else default_output_dir(quick()))


def _in_notebook() -> bool:
    """True under a Jupyter (IPython kernel) shell, where output can show images."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _show_file(path: Path) -> None:
    """In a notebook, show the written image (PNG or GIF) inline, exactly as saved."""
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(path)))


def _mark_quick_run(fig, room_above: bool) -> None:
    """Say "quick run" in the title of a figure drawn by a quick run (``MINIDCN_QUICK=1``).

    A suptitle gets the words in front; a figure without one gets a suptitle: above the
    figure's top edge when the image is cropped to its contents (``room_above``), so it
    cannot cover a panel, else at the top of the canvas.
    """
    if not quick():
        return
    title = fig._suptitle  # matplotlib keeps the suptitle here; None when there is none
    if title is not None and title.get_text():
        title.set_text(f"{QUICK_TITLE}: {title.get_text()}")
    elif room_above:
        fig.suptitle(f"{QUICK_TITLE} ({QUICK_NOTE})", y=1.0, va="bottom")
    else:
        fig.suptitle(f"{QUICK_TITLE} ({QUICK_NOTE})")


def save_figure(fig, name: str) -> None:
    """Save a matplotlib figure as ``name`` in :func:`figures_dir`, print the path, then show
    it inline under Jupyter, and close it.  A quick run's figure says so in its title.

    Returns None, so that a notebook cell ending in ``save_figure(...)`` shows the figure and
    no ``Out[...]`` line; the file is ``figures_dir() / name``."""
    import matplotlib.pyplot as plt

    _mark_quick_run(fig, room_above=True)
    path = figures_dir() / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    _show_file(path)


def save_gif(figures, name: str, fps: float = 4.0) -> None:
    """Write matplotlib figures (any iterable, taken one at a time) as the frames of the GIF
    ``name`` in :func:`figures_dir`, closing each; under Jupyter, show the GIF inline.  A quick
    run's frames say so in their title.  Returns None, as :func:`save_figure` does."""
    from . import viz

    def frames():
        for fig in figures:
            _mark_quick_run(fig, room_above=False)
            yield viz.figure_to_array(fig)

    path = figures_dir() / name
    viz.save_gif(list(frames()), path, fps=fps)
    _show_file(path)


def check(condition, message: str) -> None:
    """A lesson's assertion: stop with ``message`` if ``condition`` is false, else print it."""
    if not condition:
        raise AssertionError(f"lesson check failed: {message}")
    print(f"  ok: {message}")


def defined_at(function) -> str:
    """Where ``function`` is written, for a reader to open it.

    For example ``minidcn/nn/deform.py:89 DeformConv2d.forward``: the file (from the folder
    that holds the package), the line of the ``def`` and the name.
    """
    file = Path(inspect.getsourcefile(function)).resolve()
    package_root = Path(minidcn.__file__).resolve().parent.parent
    shown = file.relative_to(package_root) if file.is_relative_to(package_root) else file
    return f"{shown}:{inspect.getsourcelines(function)[1]} {function.__qualname__}"
