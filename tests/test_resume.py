"""A real process killed mid dendrite phase resumes to the same result, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import perforate
import perforate.training_state

WORKER = Path(__file__).with_name("resume_worker.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    return env


def _run(out: Path, kill_at_dendrite_epoch: int | None = None) -> bool:
    """Run the worker; kill it (SIGKILL) once it is inside its n-th dendrite epoch."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    seen = 0
    killed = False
    for line in proc.stdout:
        if kill_at_dendrite_epoch is not None and line.startswith("start") and "dendrite" in line:
            seen += 1
            if seen == kill_at_dendrite_epoch:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    proc.wait(timeout=300)
    if not killed:
        assert proc.returncode == 0, proc.stderr.read()
    return killed


def test_sigkill_mid_dendrite_phase_then_resume_matches_uninterrupted(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    clean.mkdir()
    crashed.mkdir()
    assert not _run(clean)
    assert _run(crashed, kill_at_dendrite_epoch=2)  # killed inside a dendrite phase
    assert not (crashed / "final.safetensors").exists()
    state = perforate.training_state.load(crashed / "ckpt.safetensors")
    assert state["controller"]["phase"] == "dendrite"
    assert not _run(crashed)  # resumes from the checkpoint and finishes
    h_clean = json.loads((clean / "history.json").read_text())
    h_crash = json.loads((crashed / "history.json").read_text())
    assert h_crash == h_clean
    assert any(r["event"] == "installed" for r in h_clean)
    _, a = perforate.checkpoint.read(clean / "final.safetensors")
    _, b = perforate.checkpoint.read(crashed / "final.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
