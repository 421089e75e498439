"""The benchmark pipeline in quick mode: runs, resumes, reports."""

from __future__ import annotations

import json

import pytest
import torch

from perforate.experiments import datasets
from perforate.experiments.bench import (
    CANDIDATE_METHODS,
    SUITES,
    jobs,
    quick_suite,
    run_suite,
    scarce,
)
from perforate.experiments.bench_report import ladder_at, write_report


def test_quick_suite_runs_resumes_and_reports(tmp_path):
    suite = quick_suite()
    logs: list[str] = []
    path = run_suite(suite, seeds=1, results_dir=tmp_path / "results", log=logs.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(jobs(suite, 1)) == 13  # plain at 2 widths, 12 methods
    for r in rows:
        assert {
            "dataset",
            "model",
            "width",
            "method",
            "seed",
            "base_params",
            "dendrite_params",
            "test",
            "val",
            "epochs",
            "seconds",
            "phases",
        } <= set(r)
        assert r["phases"] and r["epochs"] == len(r["phases"])
        assert len(r["epoch_seconds"]) == len(r["eval_seconds"]) == len(r["test_by_epoch"])
        assert len(r["epoch_seconds"]) == r["epochs"]
        assert sum(r["epoch_seconds"]) <= r["seconds"]
    for method in ("gd", "pb", "pb_learn", *CANDIDATE_METHODS):
        run = next(r for r in rows if r["method"] == method)
        assert any(event == "installed" for _, _, event in run["phases"]), method
    pb_hidden = next(r for r in rows if r["method"] == "pb_hidden")
    assert all(set(i) == {"1"} for i in pb_hidden["installs"])  # not the output layer "3"
    logs.clear()
    run_suite(suite, seeds=1, results_dir=tmp_path / "results", log=logs.append)
    assert "0 runs to do (13 recorded)" in logs[0]
    page = write_report(tmp_path / "results", tmp_path / "docs").read_text()
    assert "## quick: digits" in page and "In plain words" in page
    assert "`pb` at width 4" in page
    assert "**quick**: `pb_sparse` at width 4" in page  # regime 4's lines, in CI
    assert (tmp_path / "docs" / "figures" / "bench_quick.png").stat().st_size > 5_000
    cost = (tmp_path / "docs" / "run_cost.md").read_text()
    assert "## quick: digits" in cost and "| pb_epochs | 4 | 1 |" in cost
    assert (tmp_path / "docs" / "figures" / "cost_quick.png").stat().st_size > 5_000


def test_ladder_interpolation_is_log_linear():
    ladder = [(100.0, 0.5), (400.0, 0.7)]
    assert ladder_at(ladder, 200.0) == pytest.approx(0.6)
    assert ladder_at(ladder, 50.0) is None and ladder_at(ladder, 401.0) is None


def test_every_suite_has_the_required_methods():
    for suite in SUITES.values():
        assert {"plain", "restart", "pb", "gd"} <= set(suite.methods)
        assert len(suite.ladder) >= 3 and suite.seeds >= 3


def test_scarce_splits_are_drawn_per_seed_and_shared_by_methods():
    full = datasets.digits(0)
    a, b, a2 = scarce(full, 0.1, 0), scarce(full, 0.1, 1), scarce(full, 0.1, 0)
    assert len(a.y_train) == round(0.1 * len(full.y_train))
    assert len(a.y_val) == min(len(full.y_val), 100)
    assert torch.equal(a.x_train, a2.x_train) and torch.equal(a.y_val, a2.y_val)
    assert not torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.x_test, full.x_test)
    # Every training example comes from the full training split.
    rows = {tuple(r.tolist()) for r in full.x_train}
    assert all(tuple(r.tolist()) in rows for r in a.x_train)
    assert {"fashion_mlp_1pct", "mnist1d_mlp_10pct"} <= set(SUITES)
    assert SUITES["fashion_mlp_3pct"].data_per_seed


def test_a_scarce_suite_runs_in_quick_mode(tmp_path):
    """The scarce-data runner end to end (CI's quick mode of regime 3 and 4): the
    scarce suites' methods on 20% of digits, two seeds, resumed."""
    import dataclasses

    from perforate.experiments.bench import SCARCE_METHODS

    full = datasets.digits(0)
    suite = dataclasses.replace(
        quick_suite(),
        name="quick_scarce",
        load=lambda seed: scarce(full, 0.2, seed),
        ladder=(4,),
        methods=SCARCE_METHODS,
        data_per_seed=True,
        settings={**quick_suite().settings, "max_epochs": 12},
    )
    path = run_suite(suite, seeds=2, results_dir=tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(jobs(suite, 2)) == 2 * len(SCARCE_METHODS)
    assert {r["method"] for r in rows} == set(SCARCE_METHODS)
    logs: list[str] = []
    run_suite(suite, seeds=2, results_dir=tmp_path, log=logs.append)
    assert f"0 runs to do ({len(rows)} recorded)" in logs[0]
