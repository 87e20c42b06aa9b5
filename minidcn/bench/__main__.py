"""Command line of the benchmark: ``python -m minidcn.bench [section ...] [--repeat N]``
(also ``minidcn bench ...``)."""

from __future__ import annotations

import argparse
import importlib
import os

from . import SECTIONS

DESCRIPTION = ("Time minidcn's kernels on each backend, with torch and torchvision beside them "
               "when they are installed (they are never required).")


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def main(argv=None, prog: str = "python -m minidcn.bench") -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen sections, return 0.

    ``prog`` is the command named in usage and error messages (``minidcn bench`` when the
    minidcn command hands over).  Bad options are usage errors (SystemExit 2) before anything
    is timed.
    """
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("sections", nargs="*", metavar="section", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--repeat", type=_positive_int, default=5, metavar="N",
                        help="timed runs per entry, at least 1 (the best is shown; default 5)")
    args = parser.parse_args(argv)
    wanted = args.sections or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    print(f"minidcn benchmark, {os.cpu_count()} CPU cores, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    for name in wanted:
        importlib.import_module(f".{SECTIONS[name]}", __package__).run(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
