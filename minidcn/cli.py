"""The ``minidcn`` command (also ``python -m minidcn``).

    minidcn lessons                        list the lessons with one-line summaries
    minidcn lesson N [--quick] [--out DIR] run lesson N
    minidcn tour [--quick] [--out DIR]     run every lesson in order, stop at the first failure
    minidcn bench [section ...]            the benchmark: each implementation in its own process
                                           (--repeat N --rounds R; also python -m minidcn.bench)
    minidcn explore [--quick] [--out FILE] lesson 07's network, unit by unit, in a web page

Each lesson runs as its own Python process (``python <lesson file>``), exactly as a reader
would run it by hand, with ``MINIDCN_QUICK=1`` for ``--quick`` and ``MINIDCN_FIGURES`` set to
the output folder.  That folder is ``--out DIR``, else ``MINIDCN_FIGURES`` if set, else a
scratch folder (``<tmp>/minidcn/quick`` or ``<tmp>/minidcn/full``), so a run never changes the
checkout unless asked: ``minidcn tour --out figures`` regenerates the committed figures.  The
folder is created and tested for writing before any lesson starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import lessons_support


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minidcn", description="minidcn: deformable convolutional networks from scratch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("lessons", help="list the lessons")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--quick", action="store_true",
                      help="the short version: less data, fewer epochs (MINIDCN_QUICK=1)")
    runs.add_argument("--out", metavar="DIR", type=Path,
                      help="write figures here (default: $MINIDCN_FIGURES if set, else the scratch "
                           "folder <tmp>/minidcn/quick or <tmp>/minidcn/full; "
                           "--out figures regenerates the committed figures of a checkout)")
    one = sub.add_parser("lesson", parents=[runs], help="run one lesson")
    one.add_argument("number", type=int, help="the lesson's number, as listed by 'minidcn lessons'")
    tour = sub.add_parser("tour", parents=[runs], help="run every lesson in order")
    for command in (one, tour):
        command.set_defaults(usage=command)  # so that errors show the command's own usage
    explore = sub.add_parser(
        "explore", help="train lesson 07's network and write the sampling explorer web page")
    explore.add_argument("--quick", action="store_true",
                         help="train briefly (1200 scenes, 3 epochs) instead of lesson 07's full run")
    explore.add_argument("--out", metavar="FILE", type=Path,
                         help=f"the HTML file to write (default: {_explore_default()})")
    # main() hands "bench ..." to the benchmark's own parser; listed here for --help.
    sub.add_parser("bench", help="time the kernels: minidcn bench [section ...] [--repeat N] [--rounds R]")
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the benchmark's parser
        from .bench.__main__ import main as bench_main

        return bench_main(argv[1:], prog="minidcn bench")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "explore":
        return _explore(args.quick, args.out)
    lessons = lessons_support.lesson_files()
    if args.command == "lessons":
        return _list(lessons)
    if args.command == "lesson" and args.number not in lessons:
        available = ", ".join(str(n) for n in lessons) or "none"
        print(f"minidcn lesson: there is no lesson {args.number}; available: {available}",
              file=sys.stderr)
        return 2
    out = _output_dir(args)
    print(f"minidcn {args.command}: figures and files go to {out}", flush=True)
    if args.command == "lesson":
        return _run(lessons[args.number], args.quick, out)
    return _tour(lessons, args.quick, out)


def _output_dir(args) -> Path:
    """The run's output folder (--out, else $MINIDCN_FIGURES, else the scratch folder),
    created and tested for writing; a usage error (exit 2) if it cannot be written to."""
    given = os.environ.get("MINIDCN_FIGURES")
    out = args.out or (Path(given) if given else lessons_support.default_output_dir(args.quick))
    try:
        return lessons_support.prepare_output_dir(out.resolve())
    except OSError as error:
        named = ("--out" if args.out else "MINIDCN_FIGURES" if given
                 else "the scratch folder (name another with --out DIR)")
        args.usage.error(f"{named}: {error}")


def _list(lessons) -> int:
    if not lessons:
        print(f"no lessons found in {lessons_support.lessons_dir()}", file=sys.stderr)
        return 1
    for number, path in lessons.items():
        print(f"{number:2d}  {lessons_support.lesson_summary(path)}")
    print("\nrun one with: minidcn lesson N [--quick]    all of them: minidcn tour [--quick]")
    return 0


def _run(path: Path, quick: bool, out: Path) -> int:
    """Run one lesson file in a child Python, writing to the folder ``out``; return its exit code."""
    env = dict(os.environ, MINIDCN_FIGURES=str(out))
    env.setdefault("MPLBACKEND", "Agg")  # figures go to files; no window opens
    if quick:
        env["MINIDCN_QUICK"] = "1"
    # The child must import the same minidcn as this process, installed or not.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    print(f"== lesson {path.name}{' (quick)' if quick else ''}", flush=True)
    return subprocess.run([sys.executable, str(path)], env=env, check=False).returncode


def _tour(lessons, quick: bool, out: Path) -> int:
    if not lessons:
        print(f"no lessons found in {lessons_support.lessons_dir()}", file=sys.stderr)
        return 1
    times = []
    for number, path in lessons.items():
        start = time.perf_counter()
        code = _run(path, quick, out)
        times.append((path.name, time.perf_counter() - start))
        print(f"== {path.name}: {times[-1][1]:.1f} s", flush=True)
        if code != 0:
            print(f"minidcn tour: lesson {number} ({path.name}) failed with exit code {code}",
                  file=sys.stderr)
            return code
    print("\nlesson wall times:")
    for name, seconds in times:
        print(f"  {name:32s} {seconds:7.1f} s")
    print(f"  {'total':32s} {sum(s for _, s in times):7.1f} s")
    return 0


EXPLORE_IMAGES = 12  # test scenes in the page: about 1.3 MB each


def _explore_default() -> Path:
    return Path(tempfile.gettempdir()) / "minidcn" / "explorer.html"


def _explore(quick: bool, out: Path | None) -> int:
    """Train lesson 07's network (or load it from ``explore_quick.npz`` / ``explore_full.npz``
    beside the page) and write the explorer of its first test scenes."""
    from .explorer import explorer
    from .scene_network import make_scenes, trained

    out = (out or _explore_default()).resolve()
    if out.is_dir():
        print(f"minidcn explore: --out must be a file, got the folder {out}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cache = out.parent / f"explore_{'quick' if quick else 'full'}.npz"
    model, mean, std = trained(quick=quick, cache=cache)
    test = make_scenes(EXPLORE_IMAGES, test=True)
    notes = (f"Lesson 07's network ({'quick' if quick else 'full'} training): two plain conv + "
             "max-pool stages, then three stacked 3x3 deformable layers on a 12x12 map, trained "
             "to name the digit (or background) under every unit of 48x48 test scenes. "
             "Pick a scene, then move over or click a unit.")
    explorer(model, test.images, out, inputs=(test.images - mean) / std, notes=notes)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - start:.0f} s; open it in a browser")
    return 0
