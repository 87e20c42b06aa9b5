"""Command line of the benchmark: ``python -m minidcn.bench [section ...] [--repeat N]``."""

from __future__ import annotations

import argparse
import importlib
import os

from . import SECTIONS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidcn.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", metavar="section", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per entry (best is shown)")
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
