"""What the built-in suites added to the engine: data drawn per seed, one trained model
per seed, a study's own arms, and `verdict.pays`, the one rule for "does this arm pay"."""

from __future__ import annotations

import pytest
import torch

from perforate.experiments import suites
from perforate.experiments.arms import Arm
from perforate.experiments.study import Study, StudyError
from perforate.experiments.verdict import pays


def draw(seed: int, rows: int = 40):
    """Rows drawn by `seed`: a stand-in for a scarce subset or a few-shot sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    y = torch.randint(0, 2, (rows,), generator=g)
    return {"train": (x, y), "val": (x[:10], y[:10]), "test": (x[:10], y[:10])}


def mlp(hidden: int = 3):
    return torch.nn.Sequential(
        torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
    )


def make(**overrides) -> Study:
    sections = {
        "model": {"factory": mlp, "kwargs": {"hidden": 3}, "width": "hidden"},
        "data": {"factory": draw, "per_seed": "seed"},
        "train": {"batch_size": 8},
    }
    sections.update(overrides)
    return Study(**sections)


def test_per_seed_data_is_drawn_for_each_seed_and_shared_within_it():
    task = make().build_task()
    a, b, a2 = task.for_seed(3), task.for_seed(4), task.for_seed(3)
    assert a is a2  # made once per seed and process: every arm of seed 3 sees this draw
    assert torch.equal(a.data().train.source[0], draw(3)["train"][0])
    assert torch.equal(b.data().train.source[0], draw(4)["train"][0])
    # The study's own checks (split sizes before any run) look at seed 0's draw.
    assert torch.equal(task.data().train.source[0], draw(0)["train"][0])
    plain = make(data={"factory": draw}).build_task()
    assert plain.for_seed(5) is plain  # nothing per seed: the task itself


def test_a_checkpoint_per_seed_names_each_seeds_file():
    task_class = type(make().build_task())
    seeded = task_class(mlp, draw, checkpoint="/models/trunk{seed}.safetensors")
    assert seeded.checkpoint == "/models/trunk0.safetensors"  # what preflight reads
    assert seeded.for_seed(2).checkpoint == "/models/trunk2.safetensors"


def test_a_study_takes_its_own_arms_in_python():
    hidden_only = Arm("pb_hidden", "PB, output layer excluded", {"exclude": ["2"]}, grows=True)
    study = make(compare={"arms": ["plain", "restart", hidden_only]})
    arms = {a.name: a for a in study.arms()}
    assert arms["pb_hidden"] is hidden_only and study.arm_names[-1] == "pb_hidden"
    assert study.to_dict()["compare"]["arms"][-1]["overrides"] == {"exclude": ["2"]}
    # The arms are not part of what fixes a run: the fingerprint ignores them.
    assert study.fingerprint() == make(compare={"arms": ["plain", "restart"]}).fingerprint()
    with pytest.raises(StudyError, match="non-empty list of names"):
        make(compare={"arms": ["plain", 3]})


@pytest.mark.parametrize(
    ("beat", "match", "state"),
    [
        (["better"], [], "yes"),
        (["better"], ["equivalent"], "yes"),
        (["better"], ["better"], "yes"),
        (["better"], ["inconclusive"], "unclear"),  # the ladder might still beat it
        (["better"], ["worse"], "no"),
        (["inconclusive"], ["equivalent"], "unclear"),
        (["inconclusive"], ["worse"], "no"),
        (["equivalent"], [], "no"),
        (["worse"], ["better"], "no"),
        (["better", "better", "inconclusive"], [], "unclear"),  # every control must fall
        (["better", "equivalent"], [], "no"),
        ([], [], "unclear"),  # nothing judged: no claim either way
    ],
)
def test_pays_by_hand(beat, match, state):
    assert pays(beat, match) == state


def test_every_suite_builds_its_studies(tmp_path):
    """Each suite's studies validate (arms, ladder, checkpoint, data factory) without
    loading data; every from-scratch study holds the restart control and PB."""
    for name, suite in suites.SUITES.items():
        steps = suite.steps(tmp_path)
        assert steps, name
        for step in steps:
            names = step.study.arm_names
            if suite.regime in ("scratch", "scarce") or step.study.name.endswith("_kd"):
                assert {"plain", "restart", "pb", "ladder"} <= set(names), step.study.name
    fashion = suites.studies("mnist1d_mlp", tmp_path)
    assert [s.name for s in fashion] == ["mnist1d_mlp_h8", "mnist1d_mlp_h32"]
    assert fashion[1].compare["ladder"] == [4, 8, 16, 64, 128]


def test_every_committed_ledger_belongs_to_its_study():
    """A change to how studies are fingerprinted would orphan the published ledgers:
    `perforate bench` would refuse them as another study's."""
    import json
    from pathlib import Path

    root = Path(__file__).parents[2] / "benchmarks" / "results"
    checked = 0
    for suite in suites._suites():
        for study in suites.studies(suite.name):
            ledger = root / study.name / "runs.jsonl"
            if ledger.exists():
                header = json.loads(ledger.read_text().split("\n", 1)[0])
                assert header["fingerprint"] == study.fingerprint(), study.name
                checked += 1
    assert checked >= 17  # every published study (the quick ones write elsewhere)
