"""Command line of the benchmark: ``python -m minidcn.bench [section ...] [--repeat N]
[--rounds R] [--smoke]`` (also ``minidcn bench ...``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import section_names
from .runner import run_section
from ..threads import SET_BY_MINIDCN, user_environment
from .timing import load_average

DESCRIPTION = ("Time minidcn's kernels beside torch and torchvision (when installed; never required), "
               "each implementation in its own process, in alternating rounds; print the minimum and "
               "median of each and the speed-up against the peer.")


def _int_at_least(low: int):
    """argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {low}, got {value}")
        return value

    return parse


def _variables(text: str) -> dict:
    """argparse type: "NAME=VALUE [NAME=VALUE ...]" -> {NAME: VALUE}."""
    pairs = {}
    for item in text.split():
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by spaces, got {text!r}")
        pairs[name] = value
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by spaces, got {text!r}")
    return pairs


def main(argv=None, prog: str = "python -m minidcn.bench") -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen sections; 0 if every case ran
    and its implementations agreed, else 1.

    ``prog`` is the command named in usage and error messages (``minidcn bench`` when the
    minidcn command hands over).  Bad options are usage errors (SystemExit 2) before any
    worker starts.
    """
    sections = section_names()
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("sections", nargs="*", metavar="section",
                        help=f"any of {', '.join(sections)} (default: all)")
    parser.add_argument("--repeat", type=_int_at_least(1), default=3, metavar="N",
                        help="timed calls of each implementation per round, at least 1 (default 3)")
    parser.add_argument("--rounds", type=_int_at_least(1), default=5, metavar="R",
                        help="rounds, the implementations taking turns in each, at least 1 (default 5)")
    parser.add_argument("--env", type=_variables, action="append", default=[], metavar='"NAME=VALUE ..."',
                        help="also time minidcn with these environment variables set, as a user would "
                             "set them (repeatable; e.g. --env OPENBLAS_NUM_THREADS=2)")
    parser.add_argument("--busy", type=_int_at_least(0), default=0, metavar="K",
                        help="keep K other processes busy (an endless loop each) while the workers "
                             "run, as on a laptop doing other work (default 0)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes: checks that every worker starts, agrees and answers "
                             "(the times mean nothing)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in sections]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(sections)}")
    wanted = list(dict.fromkeys(args.sections)) or sections
    given = user_environment()
    print(f"minidcn benchmark: {os.cpu_count()} CPU cores, load average {load_average()}, "
          f"Python {sys.executable}\nthread variables you set (every worker gets them): "
          + (", ".join(f"{k}={given[k]}" for k in THREAD_VARIABLES if k in given) or "none")
          + "; minidcn sets in its own workers: "
          + (", ".join(f"{k}={v}" for k, v in SET_BY_MINIDCN.items()) or "nothing"), flush=True)
    ok = True
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    if busy:
        print(f"{len(busy)} busy process(es) running beside the workers")
    try:
        for name in wanted:
            ok &= run_section(name, args.repeat, args.rounds, args.smoke, args.env)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return 0 if ok else 1


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")

if __name__ == "__main__":
    raise SystemExit(main())
