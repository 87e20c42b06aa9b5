"""Every lesson runs as a Jupyter notebook, top to bottom, shows its figures inline and
writes every figure it names.

This is the lessons' own end-to-end test: each lesson asserts what it shows, so a lesson
that breaks fails here.  Each lesson is converted with jupytext, exactly as a student would
open it, and executed in quick mode by nbclient in a real IPython kernel.  The figure names
are read from the lesson sources (every string literal like ``"06_something.png"``), so a
lesson that silently skips a figure fails too.  (``minidcn lesson`` and ``minidcn tour``, which
run the same files as scripts, are tested in tests/test_cli.py.)

The kernel inherits this process's environment, set before it starts: quick mode, the output
folder (a tmp dir), the checkout on PYTHONPATH (so the kernel imports the minidcn under test,
not an installed copy) and the passive thread settings of ``minidcn lesson``.  Its kernelspec
is written for the test, on JUPYTER_PATH, and runs this very Python: a ``python3`` kernelspec
of the user's or the system's, which may name another interpreter, cannot get in the way.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest

import minidcn
from minidcn.lessons_support import THREAD_ENVIRONMENT, lesson_files

jupytext = pytest.importorskip("jupytext", reason="pip install '.[test]' installs jupytext")
nbclient = pytest.importorskip("nbclient", reason="pip install '.[test]' installs nbclient")
nbformat = pytest.importorskip("nbformat")

FIGURE_NAME = re.compile(r"""["'](\d\d_[\w.-]+\.(?:png|gif))["']""")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
CHECKOUT = Path(minidcn.__file__).resolve().parent.parent
LESSONS = lesson_files()
# Injected before and after the lesson: which Python and minidcn the kernel runs, and the
# matplotlib backend the lesson leaves (a lesson must not force a non-interactive one).
FIRST_CELL = "import sys, minidcn\nprint('KERNEL-PREFIX', sys.prefix)\nprint('KERNEL-MINIDCN', minidcn.__file__)"
LAST_CELL = "import matplotlib\nprint('KERNEL-BACKEND', matplotlib.get_backend())"


def test_the_lessons_are_numbered_1_to_12():
    assert sorted(LESSONS) == list(range(1, 13)), sorted(LESSONS)


def _outputs(notebook, kind=None):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind is None or output.get("output_type") == kind:
                yield output


def _stream_text(notebook) -> str:
    return "".join(output.get("text", "") for output in _outputs(notebook, "stream"))


def _images(notebook, mime: str) -> int:
    return sum(mime in output.get("data", {}) for output in _outputs(notebook)
               if output.get("output_type") in ("display_data", "execute_result"))


@pytest.mark.parametrize("number", sorted(LESSONS), ids=[LESSONS[n].stem for n in sorted(LESSONS)])
def test_lesson_runs_as_a_notebook_with_inline_figures(number, tmp_path, monkeypatch):
    path = LESSONS[number]
    named = set(FIGURE_NAME.findall(path.read_text(encoding="utf-8")))
    assert named, f"lesson {path.name} names no figure"

    out = tmp_path / "figures"
    monkeypatch.setenv("MINIDCN_QUICK", "1")
    monkeypatch.setenv("MINIDCN_FIGURES", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks its own, as in Jupyter
    kernelspec = tmp_path / "jupyter" / "kernels" / "python3"
    kernelspec.mkdir(parents=True)
    (kernelspec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minidcn tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name, value in THREAD_ENVIRONMENT.items():
        monkeypatch.setenv(name, os.environ.get(name, value))

    notebook = jupytext.read(path)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(FIRST_CELL))
    notebook.cells.append(nbformat.v4.new_code_cell(LAST_CELL))
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=900,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"lesson {path.name}, executed as a notebook, raised in a cell:\n"
                    f"{ANSI_ESCAPE.sub('', str(error))}", pytrace=False)

    printed = _stream_text(notebook)
    assert f"KERNEL-PREFIX {sys.prefix}\n" in printed, printed[:2000]
    assert f"KERNEL-MINIDCN {CHECKOUT / 'minidcn' / '__init__.py'}\n" in printed, printed[:2000]
    backend = re.search(r"KERNEL-BACKEND (\S+)", printed).group(1)
    assert "inline" in backend, f"lesson {path.name} left matplotlib's backend at {backend}"

    written = {p.name for p in out.iterdir()} if out.is_dir() else set()
    missing = named - written
    assert not missing, f"lesson {path.name} did not write {sorted(missing)} (wrote {sorted(written)})"
    for suffix, mime in ((".png", "image/png"), (".gif", "image/gif")):
        files = sum(name.endswith(suffix) for name in named)
        shown = _images(notebook, mime)
        assert shown >= files, (f"lesson {path.name} wrote {files} {suffix} figure(s) but showed "
                                f"{shown} inline ({mime})")
    assert _images(notebook, "image/png") >= 1, f"lesson {path.name} showed no image inline"
