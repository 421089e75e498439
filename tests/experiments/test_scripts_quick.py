"""Every script in benchmarks/ and tools/ runs in its quick mode, so none breaks silently.

`benchmarks/speed.py` once called an API a refactor had removed and nothing noticed; each
script now has a quick mode (seconds), run here as a subprocess the way a user runs it.
`QUICK` names the command of every script; a new script without one fails
`test_every_script_has_a_quick_mode`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Covered elsewhere: the mutation tool's own quick check (tests/test_mutation_tool.py) and
# the device check's CPU smoke run (tests/test_gpu_check.py).
ELSEWHERE = {"tools/mutation.py", "benchmarks/gpu_check.py"}


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def _speed(tmp: Path, stdout: str) -> None:
    """The quick JSON has every measurement the full table reads."""
    result = json.loads((tmp / "speed.json").read_text())
    (model,) = result["models"]
    assert [n["k"] for n in model["neuron"]] == [1, 2, 3]
    assert [d["P"] for d in model["dendrite"]] == [1, 4, 8]
    # Candidate statistics: float64 sums of P x C (mean_v, m_ve, m_vv) and C (mean_e,
    # m_ee) plus the count, per layer of the MLP 32-8-10 (C = 8 and 10).
    sizes = [d["stats_bytes_after_all_steps"] for d in model["dendrite"]]
    assert sizes == [8 * sum(3 * p * c + 2 * c + 1 for c in (8, 10)) for p in (1, 4, 8)]
    assert result["quick"] is True and result["controller"]["median_ms"] > 0
    assert "Candidate statistics memory" in stdout


def _pb_settings(tmp: Path, stdout: str) -> None:
    rows = [json.loads(line) for line in (tmp / "pb_settings.jsonl").read_text().splitlines()]
    assert [r["setting"]["method"] for r in rows] == ["restart", "correlation"]
    assert all(r["epochs"] <= 10 for r in rows)
    assert "| restart control |" in stdout


def _wheel_smoke(tmp: Path, stdout: str) -> None:
    assert stdout.startswith("quick ok: perforate ")


def _compare_cost(tmp: Path, stdout: str) -> None:
    assert "| digits | forked | 3 |" in stdout and "| digits | not forked | 3 |" in stdout
    assert {p.name for p in tmp.iterdir()} >= {"digits-True-1", "digits-False-1"}


def _convert_results(tmp: Path, stdout: str) -> None:
    """The sample of old records (2 seeds of digits_mlp: 5 widths of plain, 11 methods)
    lands in the engine's ledger under the engine's arm names, and reports."""
    lines = (tmp / "digits_mlp" / "runs.jsonl").read_text().splitlines()
    header, runs = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["kind"] == "perforate.ledger" and len(runs) == 2 * 16
    arms = {r["arm"] for r in runs}
    assert {"plain", "ladder@4", "ladder@64", "pb_patient", "pb_cycle_patience"} <= arms
    assert "pb_epochs" not in arms and all(r["converted_from"] == "digits_mlp.jsonl" for r in runs)
    assert "\ndigits_mlp: On this model and data, " in stdout


def _run_suites(tmp: Path, stdout: str) -> None:
    ledgers = list(tmp.rglob("*.jsonl"))
    assert ledgers, "the quick suite wrote no records"


# script -> (command, {tmp} standing for a scratch folder; a check of what it did)
QUICK: dict[str, tuple[list[str], Callable[[Path, str], None]]] = {
    "benchmarks/speed.py": (
        _python("benchmarks/speed.py", "--quick", "--threads", "1", "--out", "{tmp}/speed.json"),
        _speed,
    ),
    "benchmarks/pb_settings.py": (
        _python("benchmarks/pb_settings.py", "--quick", "--out", "{tmp}/pb_settings.jsonl"),
        _pb_settings,
    ),
    "tools/wheel_smoke.py": (_python("tools/wheel_smoke.py", "--quick"), _wheel_smoke),
    "tools/convert_results.py": (
        _python("tools/convert_results.py", "--quick", "--out", "{tmp}"),
        _convert_results,
    ),
    "benchmarks/compare_cost.py": (
        _python("benchmarks/compare_cost.py", "--quick", "--out", "{tmp}"),
        _compare_cost,
    ),
    "benchmarks/run_suites.sh": (
        [
            "env",
            "QUICK=1",
            "RESULTS={tmp}/results",
            f"PERFORATE={BIN}/perforate",
            "bash",
            str(ROOT / "benchmarks/run_suites.sh"),
        ],
        _run_suites,
    ),
}


def _scripts() -> list[str]:
    found = []
    for folder in ("benchmarks", "tools"):
        for path in sorted((ROOT / folder).iterdir()):
            if path.is_file() and path.suffix in (".py", ".sh"):
                found.append(f"{folder}/{path.name}")
    return found


def test_e122_every_script_has_a_quick_mode_that_the_tests_run():
    missing = [s for s in _scripts() if s not in QUICK and s not in ELSEWHERE]
    assert not missing, f"add a quick mode and an entry in QUICK for {missing}"
    assert set(QUICK) <= set(_scripts()), "QUICK names a script that no longer exists"


@pytest.mark.parametrize("script", sorted(QUICK))
def test_script_runs_in_quick_mode(script, tmp_path):
    command, check = QUICK[script]
    command = [part.replace("{tmp}", str(tmp_path)) for part in command]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr
    check(tmp_path, proc.stdout)


def test_run_suites_refuses_an_unknown_suite(tmp_path):
    env = {**os.environ, "SUITES": "digits_mlp nonesuch", "QUICK": "1"}
    env["PERFORATE"] = str(BIN / "perforate")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/run_suites.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown suite nonesuch" in proc.stderr
