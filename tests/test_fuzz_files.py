"""Mutated real files never get past perforate's readers as anything but CheckpointError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("fuzz_worker.py")


def test_e90_fuzzed_model_and_training_files_give_only_checkpoint_errors(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), "250"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fuzz.json").read_text())
    outcomes = result["outcomes"]
    unexpected = {k: v for k, v in outcomes.items() if k.startswith("UNEXPECTED")}
    assert unexpected == {}
    assert outcomes.get("ok", 0) >= 2  # the unmutated files load
    assert sum(v for k, v in outcomes.items() if k != "ok") >= 150  # most mutations refused
    # Peak memory while fuzzing grows by far less than an edited size would allocate
    # (10^8 slots of a 6-input layer: gigabytes); the files are ~40 KB.
    assert result["growth_kb"] < 200 * 1024, result
