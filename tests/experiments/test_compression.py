"""The compression regime: the distillation loss by hand, and the pipeline end to end."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from perforate.experiments import compression as cp
from perforate.experiments.bench_report import write_report

FASHION = "/usr/share/datasets/fashion-mnist"


def test_distillation_loss_by_hand():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    student = torch.tensor([[0.0, 0.0]])
    idx = torch.tensor([0])
    t, alpha = 2.0, 0.25
    loss = cp.distillation_loss(teacher, labels, t, alpha)(student, idx)
    p = torch.softmax(teacher[0] / t, -1)  # teacher at T: (e/(e+1), 1/(e+1))
    kl = float((p * (p.log() - math.log(0.5))).sum())  # student at T is uniform
    expected = alpha * t * t * kl + (1 - alpha) * math.log(2.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # The batch's indices pick the teacher rows: row 1 is uniform, so only CE remains.
    loss1 = cp.distillation_loss(teacher, labels, t, alpha)(student, torch.tensor([1]))
    assert float(loss1) == pytest.approx((1 - alpha) * math.log(2.0), rel=1e-6)


def test_jobs_pair_every_arm_with_every_seed():
    suite = cp.CompressionSuite(seeds=2)
    jobs = cp.jobs(suite)
    assert len(jobs) == 2 * (2 * len(suite.ladder) + 4)
    assert ("pb_kd", suite.pb_width, 1) in jobs and ("kd", 32, 0) in jobs


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist")
def test_quick_compression_runs_resumes_and_reports(tmp_path):
    suite = cp.quick_compression()
    logs: list[str] = []
    path = cp.run_compression(suite, results_dir=tmp_path / "results", log=logs.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(cp.jobs(suite)) == 8
    assert {r["method"] for r in rows if r["distilled"]} == {"kd", "restart_kd", "pb_kd"}
    assert len({r["teacher_test"] for r in rows if r["distilled"]}) == 1  # one teacher
    logs.clear()
    cp.run_compression(suite, results_dir=tmp_path / "results", log=logs.append)
    assert "0 runs to do (8 recorded)" in logs[0]
    page = write_report(tmp_path / "results", tmp_path / "docs").read_text()
    assert "## compression: PB against distillation" in page
    assert "`pb_kd` (width 4" in page and "Distillation alone at width 4" in page
    assert (tmp_path / "docs" / "figures" / "bench_compression_quick.png").stat().st_size > 5_000
