"""The `wider` arm: the plain model at the width whose parameter count is nearest each
seed's PB model, run after PB in its chain, one more point of the width ladder."""

from __future__ import annotations

import json

import pytest
from compare_task import write_study

from perforate import ConfigError
from perforate.experiments import cli
from perforate.experiments.compare import compare
from perforate.experiments.engine import chains
from perforate.experiments.runs import matched_width, parameter_count
from perforate.experiments.study import Study


def _params(width: int) -> int:
    """The test task's MLP 10-width-3: (10 + 1) * width + (width + 1) * 3 parameters."""
    return 11 * width + 3 * width + 3


def test_the_matched_width_is_the_nearest_by_hand(tmp_path):
    task = Study.from_toml(write_study(tmp_path / "u")).build_task()
    assert [parameter_count(task, w) for w in (1, 4, 9)] == [_params(1), _params(4), _params(9)]
    assert matched_width(task, _params(7) + 5) == 7  # 5 above 7's count, 9 below 8's
    assert matched_width(task, _params(7) + 9) == 8  # 9 below 8's, 5 under 7's + 14
    assert matched_width(task, _params(7) + 7) == 8  # as near: the larger
    assert matched_width(task, _params(300)) == 300  # past the factory's 4: doubling
    assert matched_width(task, 1) == 1


def test_wider_runs_after_pb_in_its_chain_and_matches_its_parameters(tmp_path, capsys):
    study_file = write_study(tmp_path / "u", compare='arms = ["plain", "restart", "pb", "wider"]')
    study = Study.from_toml(study_file)
    for chain in chains(study, study.arms(), range(2), fork=True):
        names = [a.name for a in chain.arms]
        assert "wider" not in names or (names[-1] == "wider" and "pb" in names)
    out = tmp_path / "o"
    report = compare(study_file, out=out, log_line=None, progress=False)
    task = study.build_task()
    lines = (out / "runs.jsonl").read_text().splitlines()[1:]
    runs = {(r["arm"], r["seed"]): r for r in map(json.loads, lines)}
    for seed in range(3):
        pb, wider = runs[("pb", seed)], runs[("wider", seed)]
        w = wider["width"]
        assert wider["params"] == _params(w) and wider["dendrites"] == 0
        assert w == matched_width(task, pb["params"])
        # Nearest: no other width is closer to PB's count.
        assert abs(_params(w) - pb["params"]) <= min(
            abs(_params(v) - pb["params"]) for v in (w - 1, w + 1)
        )
        assert wider["forked_at"] is None  # its own model, trained from scratch
    assert any(runs[("wider", s)]["width"] != 4 for s in range(3))  # PB grew: wider too
    # One more ladder point: PB is compared at equal parameters with plain and wider.
    questions = {(c["arm"], c["question"]) for c in report["comparisons"]}
    assert ("pb", "equal_params") in questions and ("wider", "test") in questions
    assert ("wider", "equal_params") not in questions
    assert "wider: at pb's parameters" in report["question"]
    # wider's runs at other widths are not "the base model" of the arms at the factory's.
    (same,) = [c for c in report["checks"] if c["check"] == "same base model"]
    assert same["ok"], same


def test_wider_sharded_equals_one_process(tmp_path):
    study = write_study(
        tmp_path / "u", compare='arms = ["plain", "pb", "wider"]\nreference = "plain"'
    )
    one = compare(study, out=tmp_path / "one", seeds=2, log_line=None, progress=False)
    assert compare(study, tmp_path / "two", 2, shard_of=(0, 2), log_line=None) is None
    two = compare(study, tmp_path / "two", 2, shard_of=(1, 2), log_line=None, progress=False)
    one.pop("timing")
    two.pop("timing")
    assert one == two


def test_wider_refusals(tmp_path, capsys):
    text = write_study(tmp_path / "u").read_text()
    folder = tmp_path / "v"
    without_pb = write_study(folder, compare='arms = ["plain", "wider"]\nreference = "plain"')
    with pytest.raises(ConfigError, match="add 'pb' to \\[compare\\] arms"):
        Study.from_toml(without_pb).arms()
    no_width = folder / "nowidth.toml"
    no_width.write_text(
        text.replace('width = "hidden"\n', "").replace(
            "[compare]\n", '[compare]\narms = ["plain", "pb", "wider"]\nreference = "plain"\n'
        )
    )
    with pytest.raises(ConfigError, match="set \\[model\\] width"):
        Study.from_toml(no_width).arms()
    # --arms wider before PB has run: one line, nothing trained.
    both = write_study(
        tmp_path / "w", compare='arms = ["plain", "pb", "wider"]\nreference = "plain"'
    )
    code = cli.main(["compare", str(both), "--out", str(tmp_path / "o"), "--arms", "wider"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("perforate: error: ")
    assert "matches the parameters of arm pb, which has no run of seed 0 yet" in err[-1]
    # perforate train has no PB runs to match.
    assert cli.main(["train", str(both), "--arm", "wider", "--device", "cpu"]) == 2
    assert "--arm wider matches the parameters of pb's runs" in capsys.readouterr().err
