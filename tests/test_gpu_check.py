"""benchmarks/gpu_check.py's CPU smoke run (what CI runs) and its failure reporting."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
CHECKS = {
    "setup",
    "parity_layers",
    "parity_candidates",
    "host_syncs",
    "pb_run",
    "bf16_autocast",
    "compile",
    "step_ratios",
    "whole_runs",
    "summary",
}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_smoke_run_passes_every_check(tmp_path):
    threads = "1"  # the smoke run is small: a second thread only spins on a shared machine
    out = tmp_path / "lines.jsonl"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--threads", threads]
    proc = subprocess.run(
        [*command, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": threads},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if not line["ok"]]
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-2000:])
    assert {line["check"] for line in lines} == CHECKS
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    by_check = {line["check"]: line for line in lines}
    syncs = by_check["host_syncs"]
    assert syncs["dendrite_max"] == {"dispatch": 0} and syncs["neuron_plain"] == {"dispatch": 0}
    assert all(line["draw_bit_identical"] for line in lines if line["check"] == "parity_candidates")
    assert by_check["pb_run"]["resume_same_device"]["bit_identical"]  # one device: exact
    assert by_check["bf16_autocast"]["dendrites"] > 0


def test_a_failing_check_is_a_line_with_ok_false_and_a_non_zero_exit(monkeypatch, capsys):
    module = _module()

    def broken(dev, small):
        raise RuntimeError("the device said no")

    monkeypatch.setitem(module.CHECKS, "parity_layers", broken)
    assert module.main(["--device", "cpu", "--small", "--only", "parity_layers"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[1]["check"] == "parity_layers" and not lines[1]["ok"]
    assert "the device said no" in lines[1]["error"]
    assert lines[-1] == {**lines[-1], "check": "summary", "ok": False, "failed": ["parity_layers"]}


def test_unknown_checks_and_a_missing_cuda_are_refused(capsys):
    module = _module()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--only", "parity_layer"])
    assert exit_info.value.code == 2
    if not module.torch.cuda.is_available():
        assert module.main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().out
