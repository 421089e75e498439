"""Two CPU processes (gloo) under DistributedDataParallel against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import perforate

WORKER = Path(__file__).with_name("ddp_worker.py")


def _launch(tmp: Path, world: int, mode: str = "ok") -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    init = tmp / "pg_init"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(init), str(tmp), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _tensors(path):
    return perforate.checkpoint.read(path)[1]


def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    for r in _launch(one, 1) + _launch(two, 2):
        assert r.returncode == 0, r.stderr[-3000:]
    h0, h1 = (json.loads((two / f"history{r}.json").read_text()) for r in (0, 1))
    assert h0 == h1
    assert any(rec["event"] == "installed" for rec in h0)
    a, b = _tensors(two / "model0.safetensors"), _tensors(two / "model1.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    single = _tensors(one / "model0.safetensors")
    hs = json.loads((one / "history0.json").read_text())
    assert [(r["phase"], r["event"], r["dendrites"]) for r in hs] == [
        (r["phase"], r["event"], r["dendrites"]) for r in h0
    ]
    for rs, r2 in zip(hs, h0, strict=True):
        assert abs(rs["score"] - r2["score"]) < 1e-12
        for layer, corr in rs["correlation"].items():
            assert abs(corr - r2["correlation"][layer]) < 1e-9
    assert sorted(single) == sorted(a)
    for k in a:
        torch.testing.assert_close(a[k], single[k], rtol=1e-9, atol=1e-11)


def test_a_failing_rank_makes_the_other_fail_not_hang(tmp_path):
    start = time.monotonic()
    results = _launch(tmp_path, 2, mode="crash")
    assert time.monotonic() - start < 120
    assert results[1].returncode != 0 and "fails on purpose" in results[1].stderr
    assert results[0].returncode != 0
    assert any(
        word in results[0].stderr
        for word in ("Connection", "closed", "Timed out", "timeout", "Gloo", "gloo")
    )
