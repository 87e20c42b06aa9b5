"""The minidcn command line, and the packaging that lets it find the lessons."""

import configparser
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import minidcn
from minidcn import cli, lessons_support

REPO = Path(__file__).resolve().parent.parent


def test_lessons_lists_each_lesson_with_its_summary(capsys):
    assert cli.main(["lessons"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(" 1  autograd: the graph, its topological order")
    for number, path in lessons_support.lesson_files().items():
        assert f"{number:2d}  {lessons_support.lesson_summary(path)}" in out


def test_lesson_runs_and_writes_its_figure(tmp_path, capsys):
    out_dir = tmp_path / "figs"
    assert cli.main(["lesson", "1", "--quick", "--out", str(out_dir)]) == 0
    figure = out_dir / "01_autograd.png"
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figures and files go to {out_dir.resolve()}" in capsys.readouterr().out


def test_without_out_a_run_writes_to_the_scratch_folder_not_the_checkout(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    (folder / "01_env.py").write_text(
        "import os\nprint('figures', os.environ['MINIDCN_FIGURES'])\n")
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=str(Path(minidcn.__file__).parent.parent))
    env.pop("MINIDCN_FIGURES", None)
    (tmp_path / "tmp").mkdir()
    for args, scratch in ((["tour", "--quick"], "quick"), (["lesson", "1"], "full")):
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from minidcn import cli, lessons_support as s; "
             f"s.lessons_dir = lambda: __import__('pathlib').Path({str(folder)!r}); "
             f"sys.exit(cli.main({args!r}))"],
            capture_output=True, text=True, cwd=REPO, env=env,
        )
        assert result.returncode == 0, result.stderr
        expected = (tmp_path / "tmp" / "minidcn" / scratch).resolve()
        assert f"go to {expected}\n" in result.stdout
        assert f"figures {expected}\n" in result.stdout
        assert expected.is_dir()


def test_an_output_folder_that_cannot_be_written_is_a_usage_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = blocker / "figures"
    with pytest.raises(SystemExit) as info:
        cli.main(["lesson", "3", "--out", str(bad)])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: minidcn lesson")
    assert f"error: --out: cannot write to the folder '{bad}'" in captured.err
    assert "== lesson" not in captured.out  # refused before the lesson started
    monkeypatch.setenv("MINIDCN_FIGURES", str(bad))
    with pytest.raises(SystemExit) as info:
        cli.main(["tour", "--quick"])
    assert info.value.code == 2
    assert f"error: MINIDCN_FIGURES: cannot write to the folder '{bad}'" in capsys.readouterr().err


def test_a_lesson_that_does_not_exist_is_an_error(capsys):
    assert cli.main(["lesson", "99"]) == 2
    err = capsys.readouterr().err
    assert "there is no lesson 99; available: 1" in err


def test_a_lesson_number_that_is_not_a_number_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["lesson", "one"])
    assert info.value.code == 2
    assert "invalid int value: 'one'" in capsys.readouterr().err


def test_tour_stops_at_the_first_failure(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "lessons"
    folder.mkdir()
    (folder / "01_fine.py").write_text("# %% [markdown]\n# # 01 fine\n\n# %%\nprint('fine')\n")
    (folder / "02_broken.py").write_text("# %% [markdown]\n# # 02 broken\n\n# %%\nraise SystemExit(3)\n")
    (folder / "03_never.py").write_text("# %%\nopen(__file__ + '.ran', 'w').close()\n")
    monkeypatch.setattr(lessons_support, "lessons_dir", lambda: folder)
    assert cli.main(["tour", "--out", str(tmp_path / "figs")]) == 3
    captured = capsys.readouterr()
    assert "lesson 2 (02_broken.py) failed with exit code 3" in captured.err
    assert "== 01_fine.py:" in captured.out and " s" in captured.out
    assert not (folder / "03_never.py.ran").exists()


def test_tour_passes_quick_and_the_figures_dir_to_each_lesson(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    (folder / "01_env.py").write_text(
        "import os, minidcn.lessons_support as s\n"
        "print('quick', s.quick(), 'figures', os.environ['MINIDCN_FIGURES'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from minidcn import cli, lessons_support as s; "
         f"s.lessons_dir = lambda: __import__('pathlib').Path({str(folder)!r}); "
         f"sys.exit(cli.main(['tour', '--quick', '--out', {str(tmp_path / 'f')!r}]))"],
        capture_output=True, text=True, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(Path(minidcn.__file__).parent.parent)),
    )
    assert result.returncode == 0, result.stderr
    assert f"quick True figures {tmp_path / 'f'}" in result.stdout
    assert "total" in result.stdout


def test_summary_reading(tmp_path):
    lesson = tmp_path / "05_x.py"
    lesson.write_text("import os\n# %% [markdown]\n#\n# # Lesson 05: the mask\n# more\n")
    assert lessons_support.lesson_summary(lesson) == "the mask"
    lesson.write_text("# %%\nprint(1)\n")
    assert "no summary" in lessons_support.lesson_summary(lesson)


def test_the_output_folder_is_minidcn_figures_else_a_scratch_folder(tmp_path, monkeypatch):
    scratch = Path(tempfile.gettempdir()) / "minidcn"
    assert lessons_support.default_output_dir(True) == scratch / "quick"
    assert lessons_support.default_output_dir(False) == scratch / "full"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("MINIDCN_FIGURES", raising=False)
    monkeypatch.setenv("MINIDCN_QUICK", "1")
    assert lessons_support.figures_dir() == tmp_path / "minidcn" / "quick"
    assert (tmp_path / "minidcn" / "quick").is_dir()
    monkeypatch.setenv("MINIDCN_FIGURES", str(tmp_path / "mine"))
    assert lessons_support.figures_dir() == tmp_path / "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot write to the folder"):
        lessons_support.prepare_output_dir(tmp_path / "file" / "sub")


@pytest.mark.parametrize("quick_run", [True, False])
def test_save_figure_writes_closes_and_marks_a_quick_run(tmp_path, monkeypatch, capsys, quick_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("MINIDCN_FIGURES", str(tmp_path))
    monkeypatch.setenv("MINIDCN_QUICK", "1" if quick_run else "0")
    titled, untitled = plt.figure(), plt.figure()
    titled.suptitle("the title")
    for fig, name in ((titled, "01_a.png"), (untitled, "01_b.png")):
        assert lessons_support.save_figure(fig, name) is None
        path = tmp_path / name
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert not plt.fignum_exists(fig.number)
        assert f"wrote {path}" in capsys.readouterr().out
    if quick_run:
        assert titled._suptitle.get_text() == "quick run: the title"
        assert untitled._suptitle.get_text().startswith("quick run (MINIDCN_QUICK=1")
    else:
        assert titled._suptitle.get_text() == "the title" and untitled._suptitle is None
    frames = [plt.figure() for _ in range(2)]
    lessons_support.save_gif(iter(frames), "01_c.gif", fps=2)
    assert (tmp_path / "01_c.gif").read_bytes()[:4] == b"GIF8"
    assert not any(plt.fignum_exists(fig.number) for fig in frames)


def test_quick_flag(monkeypatch):
    monkeypatch.setenv("MINIDCN_QUICK", "1")
    assert lessons_support.quick()
    monkeypatch.setenv("MINIDCN_QUICK", "0")
    assert not lessons_support.quick()
    monkeypatch.delenv("MINIDCN_QUICK")
    assert not lessons_support.quick()


def test_check_raises_with_the_message(capsys):
    lessons_support.check(True, "fine")
    assert "ok: fine" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="lesson check failed: wrong"):
        lessons_support.check(False, "wrong")


def test_python_dash_m_minidcn_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "minidcn", "lessons"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "autograd" in result.stdout


def test_bench_is_handed_to_the_benchmark_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "no-such-section"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: minidcn bench")
    assert "unknown section(s) no-such-section; choose from deform_conv2d, conv2d" in err


def test_bench_help_names_the_command_it_was_run_as(capsys):
    from minidcn.bench.__main__ import main as bench_main

    for run, prog in ((lambda: cli.main(["bench", "--help"]), "minidcn bench"),
                      (lambda: bench_main(["--help"]), "python -m minidcn.bench")):
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {prog} ") and "``" not in out


def test_best_time_refuses_a_repeat_below_one():
    from minidcn.bench.timing import best_time

    with pytest.raises(ValueError, match="repeat must be an int of at least 1, got 0"):
        best_time(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="warmup must be an int of at least 0, got -1"):
        best_time(lambda: None, warmup=-1)


def test_setup_cfg_lists_every_package_and_maps_the_lessons():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "minidcn").rglob("__init__.py")}
    assert on_disk | {"minidcn.lessons"} == listed
    assert cfg["options"]["package_dir"].split() == ["minidcn.lessons", "=", "lessons"]
    assert (REPO / "lessons" / "__init__.py").is_file()
    assert cfg["options.entry_points"]["console_scripts"].strip() == "minidcn = minidcn.cli:main"
