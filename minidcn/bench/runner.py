"""The benchmark's runner: one worker process per implementation, alternating timed rounds.

See ``minidcn/bench/__init__.py`` for why; ``worker.py`` for the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .timing import load_average, min_median

WORKER = Path(__file__).resolve().parent / "worker.py"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the folder holding minidcn/


class WorkerFailed(RuntimeError):
    """A worker exited or answered out of protocol; the message ends with its stderr."""


class Worker:
    """One implementation's process; ``receive()`` reads its next JSON answer."""

    def __init__(self, section: str, index: int, label: str, outputs: Path, smoke: bool,
                 variables: dict | None = None):
        from minidcn.threads import user_environment

        env = user_environment()  # the user's settings, not those minidcn made in this process
        env.update(variables or {})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        self.label = label
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), section, str(index), label, str(outputs), "1" if smoke else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)

    def send(self, line: str) -> None:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it exited; receive() reports why

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            self.close()
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
            raise WorkerFailed(f"exit code {self.process.returncode}: " + " | ".join(tail)) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("quit")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


def run_section(name: str, repeat: int, rounds: int, smoke: bool = False, variants=()) -> bool:
    """Run and print every case of section ``name``; False if a case failed or disagreed.

    ``variants``: dicts of environment variables; each adds a row per minidcn implementation,
    run with those variables set (as a user would set them), timed in the same rounds.
    """
    module = importlib.import_module(f"{__package__}.sections.{name}")
    ok = True
    for index, case in enumerate(module.cases(smoke)):
        ok &= run_case(name, index, case, repeat, rounds, smoke, variants)
    return ok


def _with_variants(case, variants) -> dict:
    """{row label: (implementation label, extra variables)} for a case and its variants."""
    rows = {}
    for label in case.implementations:
        rows[label] = (label, {})
        if label.startswith("minidcn"):
            for variables in variants:
                named = " ".join(f"{k}={v}" for k, v in variables.items())
                rows[f"{label} [{named}]"] = (label, variables)
    return rows


def run_case(section: str, index: int, case, repeat: int, rounds: int, smoke: bool, variants=()) -> bool:
    """Start the workers, check that they agree, time them in alternating rounds, print."""
    print(f"\n{case.title}", flush=True)
    rows = _with_variants(case, variants)
    load_before = load_average()
    status = dict(case.skipped)  # label -> why there is no time
    workers, described = {}, {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="minidcn-bench-") as scratch:
        outputs = {}
        for number, (label, (implementation, variables)) in enumerate(rows.items()):
            outputs[label] = Path(scratch) / f"{number}.npz"
            worker = Worker(section, index, implementation, outputs[label], smoke, variables)
            try:
                answer = worker.receive()
            except WorkerFailed as error:
                status[label], ok = f"failed ({error})", False
                continue
            if "error" in answer:
                status[label] = ("unavailable" if answer["missing"] else "failed") + f" ({answer['error']})"
                ok &= answer["missing"]
                worker.close()
            else:
                workers[label], described[label] = worker, answer["ready"]
        agreement, agree = _agreement({label: np.load(outputs[label]) for label in workers
                                       if rows[label][0] not in case.unchecked}, case)
        times = {label: {"forward": [], "forward_backward": []} for label in workers}
        if not agree:
            for label in workers:
                status[label] = "not timed: the implementations disagree"
            ok = False
        else:
            _alternate(workers, times, status, repeat, rounds)
        for worker in workers.values():
            worker.close()
    print(f"  {rounds} rounds x {repeat} calls, implementations taking turns, one process each")
    _table(case, list(rows), times, status)
    for label, text in described.items():
        print(f"  {label}: {text}")
    for line in agreement:
        print(f"  {line}")
    for numerator, denominator in case.ratios:
        stats = [min_median(times.get(label, {}).get("forward_backward")) for label in (numerator, denominator)]
        if None not in stats:
            print(f"  {numerator} / {denominator}, fwd+bwd medians: {stats[0][1] / stats[1][1]:.3g}")
    if case.footer is not None and not smoke:
        for line in case.footer():
            print(f"  {line}")
    print(f"  load average (1 min): {load_before} before, {load_average()} after, "
          f"on {os.cpu_count()} cores", flush=True)
    return ok


def _alternate(workers, times, status, repeat, rounds) -> None:
    """Timed rounds; round r starts with the r-th worker, so none always runs first."""
    for r in range(rounds):
        labels = list(workers)
        if not labels:
            return
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            workers[label].send(f"run {repeat}")
            try:
                answer = workers[label].receive()
            except WorkerFailed as error:
                status[label] = f"failed ({error})"
                del workers[label], times[label]
                continue
            for key in times[label]:
                times[label][key] += answer[key]


def _agreement(arrays: dict, case) -> tuple[list, bool]:
    """Lines saying how far each implementation's outputs are from the first one's."""
    labels = list(arrays)
    if len(labels) < 2:
        return [], True
    first, lines, agree = labels[0], [], True
    for label in labels[1:]:
        worst, where = 0.0, None
        for key in arrays[first].files:
            a, b = arrays[first][key], arrays[label][key] if key in arrays[label].files else None
            if b is None or a.shape != b.shape:
                lines.append(f"{label} vs {first}: {key!r} missing or shaped differently")
                agree = False
                continue
            if not np.allclose(b, a, rtol=case.rtol, atol=case.atol):
                agree = False
                lines.append(f"{label} vs {first}: {key} DISAGREES (rtol {case.rtol:g}, atol {case.atol:g})")
            difference = float(np.max(np.abs(b.astype(np.float64) - a))) if a.size else 0.0
            if difference >= worst:
                worst, where = difference, key
        lines.append(f"{label} vs {first}: largest |difference| {worst:.2g} ({where})")
    verdict = "outputs and gradients agree" if agree else "outputs DISAGREE: not timed"
    return [f"{verdict} (rtol {case.rtol:g}, atol {case.atol:g}):"] + [f"  {line}" for line in lines], agree


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _table(case, labels, times, status) -> None:
    peer = min_median(times.get(case.peer, {}).get("forward")) if case.peer else None
    peer_full = min_median(times.get(case.peer, {}).get("forward_backward")) if case.peer else None
    labels = labels + [k for k in case.skipped if k not in labels]
    width = max(len(label) for label in labels) + 2
    speed = f"  speed-up vs {case.peer} (medians)" if case.peer else ""
    print(f"  {'':{width}}{'forward ms':^19}{'fwd+bwd ms':^19}{speed}")
    print(f"  {'implementation':{width}}{'min':>9}{'median':>10}{'min':>9}{'median':>10}"
          + (f"{'fwd':>10}{'fwd+bwd':>10}" if case.peer else ""))
    for label in labels:
        if label not in times:
            print(f"  {label:{width}}{status.get(label, '-')}")
            continue
        fwd, full = min_median(times[label]["forward"]), min_median(times[label]["forward_backward"])
        line = f"  {label:{width}}{_ms(fwd[0]):>9}{_ms(fwd[1]):>10}{_ms(full[0]):>9}{_ms(full[1]):>10}"
        if case.peer:
            line += "".join(f"{base[1] / mine[1]:>9.2f}x" if base else f"{'-':>10}"
                            for base, mine in ((peer, fwd), (peer_full, full)))
        print(line)
