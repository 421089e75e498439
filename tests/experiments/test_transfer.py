"""Transfer as studies: every arm starts as the trained trunk with the same fresh head,
the controls are sized to one dendrite per neuron, and the pipeline (a source study, its
trunks, then growing into them) runs, resumes and reports."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from perforate.experiments import adapt, datasets, suites
from perforate.experiments.cli import main

SHAPE = (7, 1, 28, 28)


def study_with_trunk(tmp_path):
    """The Fashion-MNIST transfer study (10 labels) over a trunk file of random weights."""
    root = tmp_path / "results"
    source, t10 = suites.studies("transfer", root)[:2]
    torch.manual_seed(0)
    trunk = suites.TransferMLP(**source.model["kwargs"]).state_dict()
    trunk = {k: v for k, v in trunk.items() if not k.startswith("head.")}
    path = root / source.name / "trunks" / "seed0.safetensors"
    path.parent.mkdir(parents=True)
    save_file(trunk, str(path))
    return t10, trunk


def prepared(task, arm, seed=3):
    """The model an arm's run trains, prepared as `runs.train_run` prepares it."""
    task = task.for_seed(0)
    torch.manual_seed(seed)
    model, _ = adapt.prepare(task.build_model(arm.width), arm.adapt, task.checkpoint,
                             task.trainable)  # fmt: skip
    return model


def test_every_arm_starts_as_the_trunk_with_the_same_fresh_head(tmp_path):
    study, trunk = study_with_trunk(tmp_path)
    task = study.build_task()
    arms = {a.name: a for a in study.arms()}
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = prepared(task, arms["head"])(x)
        assert torch.equal(
            prepared(task, arms["head"]).state_dict()["body.0.weight"], trunk["body.0.weight"]
        )
        for name, arm in arms.items():
            model = prepared(task, arm)
            assert torch.allclose(model(x), reference, atol=1e-6), name
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if name == "finetune":
                assert len(trainable) == 6
            else:  # the trunk is frozen; the head (and what the arm adds) trains
                assert any(n.endswith("head.weight") for n in trainable), name
                assert all("head." in n or "lora_" in n or "extra_" in n for n in trainable)
    # Another seed draws another head.
    assert not torch.equal(
        prepared(task, arms["head"], 4).head.weight, prepared(task, arms["head"]).head.weight
    )


def test_lora_and_extra_neurons_are_sized_to_one_dendrite_per_neuron(tmp_path):
    study, _ = study_with_trunk(tmp_path)
    task = study.build_task()
    arms = {a.name: a for a in study.arms()}
    budget = 64 * 786 + 64 * 66 + 5 * 66  # by hand: fan-in + bias + output weight
    lora = prepared(task, arms["lora"])
    added = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert abs(added - budget) / budget < 0.05
    wider = prepared(task, arms["wider"])
    extra = sum(p.numel() for n, p in wider.named_parameters() if n.startswith("extra_"))
    assert abs(extra - budget) / budget < 0.05
    small = prepared(task, arms["lora_small"])
    assert sum(p.numel() for n, p in small.named_parameters() if "lora_" in n) == 5 * 976


def test_few_shot_draws_per_class_and_per_seed():
    a, b = (
        suites.few_shot("digits", suites.TARGET, 3, 0),
        suites.few_shot("digits", suites.TARGET, 3, 1),
    )
    assert torch.bincount(a.y_train).tolist() == [3] * 5
    assert torch.bincount(a.y_val).tolist() == [20] * 5
    assert not torch.equal(a.x_train, b.x_train)
    whole = suites.classes(datasets.digits(0), suites.TARGET)
    assert torch.equal(a.x_test, whole.x_test) and set(whole.y_test.tolist()) == set(range(5))


def test_quick_transfer_runs_resumes_and_reports(tmp_path, capsys):
    results, docs = tmp_path / "results", tmp_path / "docs"
    assert main(["bench", "--suite", "quick_transfer", "--results", str(results)]) == 0
    for seed in (0, 1):  # one source model per seed, its trunk without the head
        assert (results / f"quick_transfer_source/trunks/seed{seed}.safetensors").is_file()
    lines = (results / "quick_transfer_10/runs.jsonl").read_text().splitlines()
    runs = [json.loads(x) for x in lines[1:]]
    arms = {a.name for a in suites.studies("quick_transfer", results)[1].arms()}
    assert sorted(r["arm"] for r in runs) == sorted([*arms, *arms])
    by = {(r["arm"], r["seed"]): r for r in runs}
    assert by[("lora", 0)]["params"] > by[("head", 0)]["params"]  # the adapters count
    # 64 inputs here: one dendrite per neuron adds 64*66 + 64*66 + 5*66 = 8,778 parameters,
    # 68 new neurons of 64 inputs, a bias and 64 outgoing weights add 8,772.
    assert (by[("head", 0)]["width"], by[("wider", 0)]["width"]) == (64, 64 + 68)
    capsys.readouterr()
    assert main(["bench", "--suite", "quick_transfer", "--results", str(results)]) == 0
    assert "[  1/" not in capsys.readouterr().out
    assert main(["bench", "--report", "--results", str(results), "--docs", str(docs)]) == 0
    page = (docs / "benchmarks.md").read_text()
    assert "**Growing into a trained model" in page
    assert "- **quick_transfer_10**: 10 labels per class: PB " in page
    assert "Source models" not in page  # recorded by the source study itself now
    assert (docs / "figures" / "bench_quick_transfer.png").stat().st_size > 5_000
