"""perforate compare on tasks the tests build themselves: outputs, verdicts recomputed from
the records, forked arms equal to arms run from scratch, shards equal to one process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from compare_task import write_study
from safetensors.torch import load_file
from scipy import stats as sps

import perforate
from perforate.experiments import cli
from perforate.experiments.compare import compare
from perforate.experiments.imports import import_object
from perforate.experiments.verdict import ALPHA

DEFAULT_ARMS = ["plain", "restart", "pb", "ladder@2", "ladder@8", "ladder@16"]


def without_timing(report: dict) -> dict:
    """compare.json minus what the wall clock decides (kept apart under "timing")."""
    out = dict(report)
    out.pop("timing")
    return out


def records(root: Path) -> list[dict]:
    lines = (root / "runs.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[1:]]


def _verdict_by_hand(d: list[float], p_holm: float, rope: float) -> str:
    n = len(d)
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > rope and p_holm < ALPHA:
        return "better"
    if high < -rope and p_holm < ALPHA:
        return "worse"
    if rope > 0 and -rope <= low and high <= rope:
        return "equivalent"
    return "inconclusive"


@pytest.mark.parametrize("kind", ["classes", "regression"])
def test_default_study_writes_outputs_and_its_verdict_matches_the_records(tmp_path, kind, capsys):
    study = write_study(tmp_path / "user", kind)
    out = tmp_path / "out"
    assert cli.main(["compare", str(study), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("compare.json", "compare.md", "compare.png", "runs.jsonl"):
        assert (out / name).is_file(), name
    report = json.loads((out / "compare.json").read_text())
    assert [a["name"] for a in report["arms"]] == DEFAULT_ARMS
    assert report["direction"] == ("maximize" if kind == "classes" else "minimize")
    recs = records(out)
    assert sorted((r["arm"], r["seed"]) for r in recs) == sorted(
        (a, s) for a in DEFAULT_ARMS for s in range(3)
    )
    sign = 1 if kind == "classes" else -1
    test = {(r["arm"], r["seed"]): r["test"] for r in recs}
    tests = [c for c in report["comparisons"] if c["question"] == "test"]
    assert [c["arm"] for c in tests] == ["plain", "pb"]  # the ladder answers at equal params
    for c in tests:
        d = [sign * (test[(c["arm"], s)] - test[("restart", s)]) for s in range(3)]
        assert c["mean"] == pytest.approx(np.mean(d), abs=1e-12)
        assert c["wins"] == sum(x > 0 for x in d)
        if np.std(d) > 0:
            assert c["p"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue, rel=1e-9)
        assert c["verdict"] == _verdict_by_hand(d, c["p_adjusted"], report["rope"])
    # The winner is the arm with the best mean validation score, and its model loads.
    means = {a["name"]: sign * a["val_mean"] for a in report["arms"]}
    assert report["verdict"]["winner"] == max(means, key=means.get)
    winner = out / report["verdict"]["winner_model"]
    state = load_file(winner)
    assert state, "the winner's model file holds tensors"
    run = next(
        r
        for r in recs
        if r["arm"] == report["verdict"]["winner"] and r["seed"] == report["verdict"]["winner_seed"]
    )
    # Built by the user's factory at the winner's width, the file gives the recorded score.
    user = tmp_path / "user"
    factory = import_object("mymodel:mlp", search=[user])
    data = import_object("mydata:table", search=[user])(kind=kind)
    model = perforate.load(factory(10, run["width"], 3 if kind == "classes" else 1), winner)
    model.eval()
    with torch.no_grad():
        pred = model(data["val"][0])
    y = data["val"][1]
    score = (
        (pred.argmax(1) == y).float().mean().item()
        if kind == "classes"
        else ((pred.squeeze(1) - y) ** 2).mean().item()
    )
    assert score == pytest.approx(run["val"], rel=1e-6)
    text = (out / "compare.md").read_text()
    assert report["verdict"]["sentence"] in text
    assert "dendrites" in report["verdict"]["sentence"]
    printed = capsys.readouterr().out
    assert "Question:" in printed and printed.count(" seed ") == 18


def test_forked_arms_equal_arms_run_from_scratch(tmp_path):
    arms = '["plain", "restart", "pb", "gd", "pb_sparse", "pb_output_error"]'
    reports = {}
    for fork in ("true", "false"):
        study = write_study(tmp_path / fork, compare=f"arms = {arms}\nfork = {fork}")
        reports[fork] = compare(study, out=tmp_path / fork / "out", seeds=2, log_line=None)
    forked, scratch = (records(tmp_path / f / "out") for f in ("true", "false"))
    assert {r["forked_at"] is not None for r in forked if r["arm"] != "plain"} == {True}
    assert {r["forked_at"] for r in scratch} == {None}
    by = {(r["arm"], r["seed"]): r for r in scratch}
    for r in forked:
        s = by[(r["arm"], r["seed"])]
        for key in ("val", "test", "params", "epochs", "dendrites", "cycles", "phases", "end"):
            assert r[key] == s[key], (r["arm"], key)
        assert [c[1] for c in r["curve"]] == [c[1] for c in s["curve"]]
        a = load_file(tmp_path / "true" / "out" / r["model"])
        b = load_file(tmp_path / "false" / "out" / s["model"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The prefix ran once per seed: the forked study trained fewer epochs.
    own = sum(r["own_seconds"] > 0 for r in forked)
    assert own == len(forked)
    assert without_timing(reports["true"])["verdict"] == without_timing(reports["false"])["verdict"]


def test_two_shards_equal_one_process(tmp_path):
    arms = 'arms = ["plain", "restart", "pb", "ladder"]'
    one = compare(
        write_study(tmp_path / "one", compare=arms), out=tmp_path / "one" / "out", log_line=None
    )
    study = write_study(tmp_path / "two", compare=arms)
    out = tmp_path / "two" / "out"
    assert compare(study, out=out, shard_of=(0, 2), log_line=None) is None  # half done
    two = compare(study, out=out, shard_of=(1, 2), log_line=None)
    assert two is not None
    strip = lambda r: {k: v for k, v in without_timing(r).items() if k != "study"}  # noqa: E731
    assert strip(one) == strip(two)


def test_same_command_again_runs_nothing_and_rewrites_the_same_report(tmp_path):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]')
    first = compare(study, out=tmp_path / "o", seeds=2, log_line=None)
    lines = (tmp_path / "o" / "runs.jsonl").read_text()
    again = compare(study, out=tmp_path / "o", seeds=2, log_line=None)
    assert (tmp_path / "o" / "runs.jsonl").read_text() == lines
    assert again == first


def test_seeds_auto_reports_how_it_stopped(tmp_path):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]\nmax_seeds = 3')
    report = compare(study, out=tmp_path / "o", seeds="auto", log_line=None)
    seq = report["sequential"]
    assert seq["looks"] == [3]
    assert report["level"] == pytest.approx(0.95)  # one look: nothing to spend
    assert seq["stopped"].startswith("stopped at")
    assert report["seeds"] == [0, 1, 2]


def test_two_worker_processes_equal_one(tmp_path):
    arms = 'arms = ["plain", "restart", "ladder"]\nladder = [2]'
    one = compare(
        write_study(tmp_path / "a", compare=arms), out=tmp_path / "a" / "o", seeds=2, log_line=None
    )
    two = compare(
        write_study(tmp_path / "b", compare=arms),
        out=tmp_path / "b" / "o",
        seeds=2,
        jobs=2,
        log_line=None,
    )
    strip = lambda r: {k: v for k, v in without_timing(r).items() if k != "study"}  # noqa: E731
    assert strip(one) == strip(two)


def test_bf16_autocast_on_the_cpu_and_device_auto(tmp_path):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart", "pb"]')
    study.write_text(study.read_text().replace("max_epochs = 40", 'max_epochs = 40\namp = "bf16"'))
    report = compare(study, out=tmp_path / "o", seeds=1, device="auto", log_line=None)
    runs = [r for a in report["arms"] for r in a["runs"]]
    assert all(math.isfinite(r["val"]) and math.isfinite(r["test"]) for r in runs)
    recs = records(tmp_path / "o")
    assert {r["device"] for r in recs} == {"cuda" if torch.cuda.is_available() else "cpu"}


def test_a_chain_run_by_another_process_is_skipped(tmp_path):
    import fcntl

    from perforate.experiments.engine import Layout, Runner, chains
    from perforate.experiments.study import Study

    study = Study.from_toml(write_study(tmp_path / "u", compare='arms = ["plain", "restart"]'))
    runner = Runner(study, tmp_path / "o", "cpu", "restart", study.fingerprint())
    (chain,) = chains(study, study.arms(), [0], fork=True)
    with Layout(tmp_path / "o").lock(chain) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a second process running the same chain
        assert runner.run_chain(chain) == []
    assert [r["arm"] for r in runner.run_chain(chain)] == ["plain", "restart"]


LOADERS = """
import torch
from torch.utils.data import DataLoader, TensorDataset

from mydata import table


def loaders(kind: str = "classes"):
    s = table(kind=kind)
    return {
        "train": DataLoader(TensorDataset(*s["train"]), batch_size=32, shuffle=True),
        "val": TensorDataset(*s["val"]),
        "test": s["test"],
    }
"""


def test_datasets_and_dataloaders_as_given_fork_exactly(tmp_path):
    reports = {}
    for fork in ("true", "false"):
        study = write_study(
            tmp_path / fork, compare=f'arms = ["plain", "restart", "pb"]\nfork = {fork}'
        )
        (tmp_path / fork / "myloaders.py").write_text(LOADERS)
        study.write_text(study.read_text().replace("mydata:table", "myloaders:loaders"))
        reports[fork] = compare(study, out=tmp_path / fork / "o", seeds=1, log_line=None)
    strip = lambda r: [  # noqa: E731
        {k: v for k, v in run.items() if k not in ("forked_at", "model")}
        for a in r["arms"]
        for run in a["runs"]
    ]
    assert strip(reports["true"]) == strip(reports["false"])
    assert any(run["forked_at"] for a in reports["true"]["arms"] for run in a["runs"])


def test_report_rewrites_the_outputs_from_the_ledger_alone(tmp_path, capsys):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart"]')
    first = compare(study, out=tmp_path / "o", seeds=2, log_line=None)
    (tmp_path / "o" / "compare.json").unlink()
    (tmp_path / "u" / "mymodel.py").unlink()  # nothing is imported or trained
    assert cli.main(["report", str(tmp_path / "o")]) == 0
    again = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert without_timing(again) == without_timing(first)
    assert "report:" in capsys.readouterr().out
