"""The benchmark's command line and worker protocol (tiny shapes; no timing is asserted)."""

import os

import numpy as np
import pytest

from minidcn.bench import __main__ as bench, runner, section_names
from minidcn.bench.common import Case

SECTIONS = ["deform_conv2d", "conv2d", "group_norm", "roi_align", "train", "dcnv3", "msda"]


def test_the_sections_are_the_modules_of_the_sections_folder_in_their_order():
    assert section_names() == SECTIONS


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "argument --repeat: expected a whole number of at least 1, got 0"),
    (["--repeat", "-1"], "argument --repeat: expected a whole number of at least 1, got -1"),
    (["--repeat", "two"], "argument --repeat: expected a whole number of at least 1, got two"),
    (["conv2d", "--rounds", "0"], "argument --rounds: expected a whole number of at least 1, got 0"),
    (["--rounds", "1.5"], "argument --rounds: expected a whole number of at least 1, got 1.5"),
    (["conv2d", "nope"], "unknown section(s) nope; choose from " + ", ".join(SECTIONS)),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--env", "FOO"], "argument --env: expected NAME=VALUE pairs separated by spaces, got FOO"),
    (["--env", "A=1 2B=3"], "argument --env: expected NAME=VALUE pairs separated by spaces, got A=1 2B=3"),
    (["--env", " "], "argument --env: expected NAME=VALUE pairs separated by spaces, got  "),
    (["--busy", "-1"], "argument --busy: expected a whole number of at least 0, got -1"),
])
def test_bad_options_are_usage_errors_before_any_worker_starts(monkeypatch, capsys, argv, message):
    def started(*args, **kwargs):
        raise AssertionError("a section ran despite a usage error")

    monkeypatch.setattr(bench, "run_section", started)
    with pytest.raises(SystemExit) as info:
        bench.main(argv, prog="minidcn bench")
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: minidcn bench")
    assert message in captured.err.replace("'", "")
    assert captured.out == ""


def test_a_worker_answers_ready_then_one_time_per_call_and_imports_only_its_library(tmp_path):
    worker = runner.Worker("group_norm", 0, "minidcn numba", tmp_path / "out.npz", smoke=True)
    try:
        ready = worker.receive()
        assert "numba" in ready["ready"] and "minidcn" in ready["libraries"]
        assert "torch" not in ready["libraries"]
        worker.send("run 2")
        times = worker.receive()
        assert sorted(times) == ["forward", "forward_backward"]
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())
    finally:
        worker.close()
    assert worker.process.returncode == 0
    saved = np.load(tmp_path / "out.npz")
    assert sorted(saved.files) == ["grad of bias", "grad of weight", "grad of x", "output"]


def test_a_torch_worker_does_not_import_minidcn(tmp_path):
    pytest.importorskip("torch")
    worker = runner.Worker("group_norm", 0, "torch", tmp_path / "out.npz", smoke=True)
    try:
        ready = worker.receive()
    finally:
        worker.close()
    assert ready["libraries"] == ["torch"]


def test_smoke_run_times_every_implementation_and_reports_a_missing_peer(tmp_path, monkeypatch, capsys):
    """With an import of torch that fails (as where torch is not installed), the peer's row
    says so, the minidcn rows are timed and checked against each other, and the run succeeds.
    An --env variant is one more row, which computes the same bits (one numba thread)."""
    (tmp_path / "torch.py").write_text("raise ImportError('torch is hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    argv = ["conv2d", "--smoke", "--repeat", "1", "--rounds", "2", "--env", "NUMBA_NUM_THREADS=1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("thread variables you set (every worker gets them): ")
    assert "2 rounds x 1 calls, implementations taking turns, one process each" in out
    rows = {line[10:].split("  ")[0]: line for line in out.splitlines() if line.startswith("  minidcn ")}
    for backend in ("numba", "numba [NUMBA_NUM_THREADS=1]", "reference"):
        fields = rows[backend].split()[-6:]  # min and median twice, 2 speed-ups
        assert all(float(ms) > 0 for ms in fields[:4]) and fields[4:] == ["-", "-"]
    torch_row = next(line.split(None, 1) for line in out.splitlines() if line.startswith("  torch "))
    assert torch_row == ["torch", "unavailable (ImportError: torch does not import: ImportError: "
                                  "torch is hidden by the test)"]
    assert "outputs and gradients agree (rtol 0.001, atol 0.001):" in out
    assert "minidcn numba [NUMBA_NUM_THREADS=1] vs minidcn numba: largest |difference| 0 (" in out
    assert "load average (1 min):" in out


def test_implementations_that_disagree_are_reported(tmp_path):
    np.savez(tmp_path / "a.npz", output=np.zeros(3, np.float32))
    np.savez(tmp_path / "b.npz", output=np.array([0, 0, 0.5], np.float32))
    np.savez(tmp_path / "c.npz", output=np.array([0, 0, 1e-5], np.float32))
    loaded = {k: np.load(tmp_path / f"{k}.npz") for k in "abc"}
    lines, agree = runner._agreement(loaded, Case("t", {}, rtol=1e-3, atol=1e-3))
    assert not agree
    assert lines[0] == "outputs DISAGREE: not timed (rtol 0.001, atol 0.001):"
    assert "  b vs a: output DISAGREES (rtol 0.001, atol 0.001)" in lines
    assert "  b vs a: largest |difference| 0.5 (output)" in lines
    assert "  c vs a: largest |difference| 1e-05 (output)" in lines
