"""`perforate bench`: the built-in suites on the compare engine, their report, and the
verdicts of docs/benchmarks.md pinned from hand-made records (NaN and one seed too)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

import perforate
from perforate.experiments import datasets, models, suites
from perforate.experiments.bench_report import Studied, findings, load, scratch_findings
from perforate.experiments.cli import main
from perforate.experiments.compare import build_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import convert_results


def ledger(root: Path, study: str) -> list[dict]:
    return [json.loads(x) for x in (root / study / "runs.jsonl").read_text().splitlines()[1:]]


def test_quick_suites_run_resume_and_report(tmp_path, capsys):
    """Three regimes' pipelines end to end through the command line: from scratch (every
    arm), scarce data (a draw per seed) and compression (a teacher, then students on its
    logits); a second run trains nothing; the report has every regime's sentences."""
    results, docs = tmp_path / "results", tmp_path / "docs"
    for suite in ("quick", "quick_scarce", "quick_compression"):
        assert main(["bench", "--suite", suite, "--results", str(results)]) == 0
    runs = ledger(results, "quick")
    quick = suites.studies("quick", results)[0]
    assert {r["arm"] for r in runs} == {a.name for a in quick.arms()}
    assert len(runs) == 2 * len(quick.arms())
    for r in runs:
        assert len(r["best"]) == len(r["phases"]) == len(r["curve"]) == r["epochs"]
    for arm in ("gd", "pb", "pb_learn", *suites.CANDIDATES):
        events = [e for r in runs if r["arm"] == arm for _, e in r["phases"]]
        assert "installed" in events, arm
    # pb_hidden never wraps the output layer ("3" of the MLP).
    model = perforate.load(
        models.mlp(64, 4, 10), results / "quick/models/pb_hidden/seed0.safetensors"
    )
    assert set(perforate.dendritic_layers(model)) == {"1"}
    # Scarce: each seed trained on its own draw, the same for every arm of that seed.
    scarce = ledger(results, "quick_scarce")
    plain = {r["seed"]: r for r in scarce if r["arm"] == "plain"}
    assert plain[0]["curve"][0][1] != plain[1]["curve"][0][1]
    # Compression: one teacher per seed, its model saved for the students' data.
    assert (results / "quick_compression_teacher/models/plain/seed1.safetensors").is_file()
    before = {p: p.read_text() for p in results.rglob("runs.jsonl")}
    capsys.readouterr()
    assert main(["bench", "--suite", "quick", "--results", str(results)]) == 0
    assert "[  1/" not in capsys.readouterr().out  # nothing trained again
    assert before == {p: p.read_text() for p in results.rglob("runs.jsonl")}

    assert main(["bench", "--report", "--results", str(results), "--docs", str(docs)]) == 0
    page = (docs / "benchmarks.md").read_text()
    assert "## quick: digits" in page and "## When to use dendrites" in page
    assert "- **quick**: PB at width 4 " in page
    assert "- **quick**: `pb_sparse` at width 4 " in page  # the candidates' lines
    assert "- **quick_scarce**: PB at width 4 " in page
    assert "PB on the distillation loss (width 4" in page
    assert "Distillation alone at width 8: " in page
    found, _ = findings(load(results))
    paid = sum(f.state == "yes" for f in found)
    assert f"**In short:** PB paid in {paid} of {len(found)} comparisons above" in page
    for name in ("bench_quick.png", "bench_quick_compression.png", "cost_quick.png"):
        assert (docs / "figures" / name).stat().st_size > 5_000
    cost = (docs / "run_cost.md").read_text()
    assert "## quick: digits" in cost and "| pb_patient | 4 | 2 |" in cost
    assert json.loads((results / "quick/compare.json").read_text())["seeds"] == [0, 1]


# --- verdicts pinned from records ----------------------------------------------------------


def record(arm: str, seed: int, test: float, params: int = 100, width: int = 8) -> dict:
    """A run record with what build_report reads."""
    grown = params - 100
    return {
        "arm": arm, "seed": seed, "val": test, "test": test, "params": params,
        "base_params": 100, "dendrite_params": grown, "dendrites": int(grown > 0),
        "dendrites_per_neuron": 0.0, "epochs": 3, "cycles": 0, "end": "early_stopping",
        "forked_at": None, "model": None, "seconds": 1.0, "own_seconds": 1.0, "width": width,
        "curve": [[1.0, test, test]], "phases": [["n", "done"]], "best": [test],
    }  # fmt: skip


def studied(recs: list[dict], arms=("plain", "restart", "pb", "ladder")) -> Studied:
    """A digits study with the given arms and a ladder at width 16 only."""
    study = suites.study(
        "pinned",
        {"factory": models.mlp, "kwargs": {"inputs": 64, "hidden": 8, "classes": 10},
         "width": "hidden"},
        {"name": "digits"}, list(arms), 3, compare={"ladder": [16]},
    )  # fmt: skip
    seeds = sorted({r["seed"] for r in recs})
    names = {r["arm"] for r in recs}
    arms_ = [a for a in study.arms() if a.name in names]
    return Studied(
        suites.SUITES["digits_mlp"], study, recs, build_report(study, arms_, recs, seeds)
    )


def interval(d: list[float]) -> tuple[float, float, float]:
    n, mean, sd = len(d), float(np.mean(d)), float(np.std(d, ddof=1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


BASE = [0.80, 0.81, 0.82]


def runs(pb: list[float], ladder_gain: float = 0.01) -> list[dict]:
    """plain = restart = BASE; the width-16 ladder point ladder_gain above them at 400
    parameters; PB at 200 parameters (half way in log parameters)."""
    out = []
    for s, (b, p) in enumerate(zip(BASE, pb, strict=True)):
        out += [record("plain", s, b), record("restart", s, b), record("pb", s, p, 200)]
        out.append(record("ladder@16", s, b + ladder_gain, 400, 16))
    return out


def test_pb_pays_when_it_beats_restart_and_is_not_below_the_ladder():
    gain = [0.02, 0.02, 0.025]
    (f,) = scratch_findings(studied(runs([b + g for b, g in zip(BASE, gain, strict=True)])))
    test, ladder = f.basis
    mean, low, high = interval(gain)
    assert (test["mean"], test["low"], test["high"]) == pytest.approx((mean, low, high))
    # Against restart: t = mean / (sd / sqrt 3) = 13.0, p = 0.00587; Holm with plain
    # (p = 1, every difference 0) doubles it: 0.0117 < 0.05, and low 0.0145 > rope 0.005.
    assert test["p_adjusted"] == pytest.approx(2 * 2 * sps.t.sf(13.0, 2), rel=1e-6)
    assert test["verdict"] == "better"
    # The ladder at 200 parameters: half way between 100 and 400 in log parameters, so
    # plain + 0.005; PB is above it by gain - 0.005: low 0.0095 > 0.005, better.
    assert ladder["mean"] == pytest.approx(np.mean(gain) - 0.005)
    assert ladder["verdict"] == "better" and f.state == "yes"
    assert f.label == "PB at width 8" and f.kept == (3, 3)


def test_pb_is_unclear_where_the_ladder_might_still_beat_it():
    gain = [0.02, 0.02, 0.025]
    recs = runs([b + g for b, g in zip(BASE, gain, strict=True)], ladder_gain=0.02)
    (f,) = scratch_findings(studied(recs))
    # Against the ladder (plain + 0.01 at 200 parameters): low 0.0045 < rope, high 0.019.
    assert f.basis[0]["verdict"] == "better" and f.basis[1]["verdict"] == "inconclusive"
    assert f.state == "unclear"


def test_pb_does_not_pay_when_equivalent_to_restart():
    (f,) = scratch_findings(studied(runs([b + 0.001 for b in BASE])))
    assert f.basis[0]["verdict"] == "equivalent" and f.state == "no"


def test_a_nan_score_drops_its_seed_and_one_seed_decides_nothing():
    recs = runs([0.83, math.nan, 0.845])
    (f,) = scratch_findings(studied(recs))
    test = f.basis[0]
    assert test["n"] == 2 and test["dropped"] == 1
    mean, low, high = interval([0.03, 0.025])  # t with 1 degree of freedom: 12.7
    assert (test["mean"], test["low"], test["high"]) == pytest.approx((mean, low, high))
    assert test["verdict"] == "inconclusive" and f.state == "unclear"
    (one,) = scratch_findings(studied([r for r in recs if r["seed"] == 0]))
    assert one.basis[0]["n"] == 1 and math.isnan(one.basis[0]["low"])
    assert one.basis[0]["verdict"] == "inconclusive" and one.state == "unclear"
    assert "1 paired seed(s)" in one.basis[0]["reason"]


def test_transfer_pays_only_by_beating_every_control(tmp_path):
    from perforate.experiments.bench_report import transfer_findings

    study = suites.studies("quick_transfer", tmp_path)[1]
    controls = ("head", "restart", "finetune", "lora", "wider", "lora_small")

    def make(finetune_gap: float) -> Studied:
        recs = []
        for s in range(3):
            recs += [record(c, s, 0.70 + 0.01 * s) for c in controls]
            recs[-4]["test"] += finetune_gap  # finetune
            recs += [
                record(a, s, 0.75 + 0.01 * s + 0.002 * s * s, 150) for a in ("pb", "pb_sparse")
            ]
        arms = [a for a in study.arms() if a.name != "gd"]  # not run here
        return Studied(suites.SUITES["quick_transfer"], study, recs,
                       build_report(study, arms, recs, [0, 1, 2]))  # fmt: skip

    pb, sparse = transfer_findings(make(0.0))
    assert [c["reference"] for c in pb.basis] == ["head", "restart", "finetune", "lora", "wider"]
    assert all(c["verdict"] == "better" for c in pb.basis) and pb.state == "yes"
    assert sparse.basis[-1]["reference"] == "lora_small"  # its budget's LoRA too
    pb, _ = transfer_findings(make(0.10))  # fine-tuning 10 points up: PB is worse
    assert {c["reference"]: c["verdict"] for c in pb.basis}["finetune"] == "worse"
    assert pb.state == "no" and pb.label == "10 labels per class: PB"


# --- the scarce-data draws and the old records -----------------------------------------------


def test_scarce_splits_are_drawn_per_seed_and_shared_by_arms():
    full = datasets.digits(0)
    a, b, a2 = (suites.scarce("digits", 0.1, s) for s in (0, 1, 0))
    assert len(a.y_train) == round(0.1 * len(full.y_train))
    assert len(a.y_val) == min(len(full.y_val), 100)
    assert torch.equal(a.x_train, a2.x_train) and torch.equal(a.y_val, a2.y_val)
    assert not torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.x_test, full.x_test)
    rows = {tuple(r.tolist()) for r in full.x_train}  # every example from the full split
    assert all(tuple(r.tolist()) in rows for r in a.x_train)


def test_old_records_map_to_the_engines_arms(tmp_path):
    h8, h32 = suites.studies("mnist1d_mlp", tmp_path)
    old = {"method": "plain", "width": 32}
    assert convert_results.arm_of(old, h8) == "ladder@32"
    assert convert_results.arm_of(old, h32) == "plain"
    assert convert_results.arm_of({"method": "pb_epochs", "width": 8}, h8) == "pb_patient"
    assert convert_results.arm_of({"method": "pb_patient", "width": 8}, h8) == "pb_cycle_patience"
    assert convert_results.arm_of({"method": "pb", "width": 32}, h8) is None
    _, kd = suites.studies("compression", tmp_path)
    assert (
        convert_results.arm_of({"method": "kd", "width": 16, "distilled": True}, kd) == "ladder@16"
    )
    assert convert_results.arm_of({"method": "pb_kd", "width": 8, "distilled": True}, kd) == "pb"
    assert convert_results.arm_of({"method": "pb", "width": 8, "distilled": False}, kd) is None
    t10 = suites.studies("transfer", tmp_path)[1]
    assert (
        convert_results.arm_of({"method": "head_restart", "width": 10, "shots": 10}, t10)
        == "restart"
    )
    assert convert_results.arm_of({"method": "head", "width": 30, "shots": 30}, t10) is None


def test_the_controllers_best_score_is_replayed_with_its_margin(tmp_path):
    """improvement_rel 1e-3: a cycle reaching 0.7005 over an accepted 0.70 (less than
    0.0007 better) is not accepted; 0.72 is."""
    study = suites.studies("digits_mlp", tmp_path)[0]
    pb = next(a for a in study.arms() if a.name == "pb")
    phases = [["n", 0.6, "continue"], ["n", 0.7, "dendrite_phase"], ["d", 0.7, "installed"],
              ["n", 0.7005, "dendrite_phase"], ["d", 0.7, "x"], ["n", 0.72, "done"]]  # fmt: skip
    assert convert_results.replay_best(phases, pb, study) == [0.6, 0.7, 0.7, 0.7, 0.7, 0.72]
