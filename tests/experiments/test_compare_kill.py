"""A study killed with SIGKILL at random moments and run again finishes with the same
compare.json as one that was never interrupted (wall-clock values aside)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from compare_task import write_study

from perforate.experiments.compare import compare


def _cmd(study: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "perforate.experiments.cli",
        "compare",
        str(study),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]


def _training(out: Path) -> bool:
    """A run has written its first checkpoint: the study is past its start-up."""
    return (out / "work").exists() and any((out / "work").rglob("ckpt.safetensors"))


def test_killed_study_resumes_to_the_same_report(tmp_path):
    arms = 'arms = ["plain", "restart", "pb"]'
    study = write_study(tmp_path / "user", compare=arms)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = tmp_path / "killed"
    rng = random.Random(21)
    kills = mid_run = 0
    # Three kills once training has started: the first as soon as a run has checkpointed
    # (so one lands inside a run however loaded the machine is: runs of this tiny study
    # last a fraction of a second and their folders go when they end), then at random.
    for attempt in range(3):
        proc = subprocess.Popen(
            _cmd(study, out),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = time.monotonic()
        while proc.poll() is None and not _training(out):
            if time.monotonic() - started > 120:
                break
            time.sleep(0.05)
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.5) if attempt else 0.0)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        mid_run += any((out / "work").rglob("ckpt.safetensors")) if out.exists() else 0
    assert kills >= 2, "the test must interrupt the study"
    assert mid_run >= 1, "at least one kill must land inside a run"
    done = subprocess.run(_cmd(study, out), cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    killed = json.loads((out / "compare.json").read_text())
    lines = (out / "runs.jsonl").read_text().splitlines()[1:]
    keys = [(json.loads(x)["arm"], json.loads(x)["seed"]) for x in lines]
    assert len(keys) == len(set(keys)) == 9  # no record twice

    clean = compare(study, out=tmp_path / "clean", log_line=None, progress=False)
    for report in (killed, clean):
        report.pop("timing")
        report["study"].pop("source", None)
    assert killed == clean
