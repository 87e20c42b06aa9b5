"""The quick tour runs every lesson top to bottom and each writes the figures it names.

This is the lessons' own end-to-end test: each lesson asserts what it shows, so a lesson
that breaks fails the tour.  The figure names are read from the lesson sources (every
string literal like ``"06_something.png"``), so a lesson that silently skips a figure
fails here too.
"""

import re
import subprocess
import sys

from minidcn.lessons_support import lesson_files

FIGURE_NAME = re.compile(r"""["'](\d\d_[\w.-]+\.(?:png|gif))["']""")


def test_quick_tour_runs_every_lesson_and_writes_the_figures_it_names(tmp_path):
    lessons = lesson_files()
    assert sorted(lessons) == list(range(1, 11)), sorted(lessons)
    result = subprocess.run(
        [sys.executable, "-m", "minidcn", "tour", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    written = {p.name for p in tmp_path.iterdir()}
    for number, path in lessons.items():
        named = set(FIGURE_NAME.findall(path.read_text(encoding="utf-8")))
        assert named, f"lesson {number} names no figure"
        missing = named - written
        assert not missing, f"lesson {number} did not write {sorted(missing)}"
