"""The transfer regime: every arm starts from the same function, parameters are matched,
and the pipeline runs, resumes and reports."""

from __future__ import annotations

import json
import os

import pytest
import torch

from perforate.experiments import transfer as tr
from perforate.experiments.bench_report import write_report

FASHION = "/usr/share/datasets/fashion-mnist"


def source_state(seed=0):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in tr.trunk_model(5).state_dict().items()}


def test_lora_and_extra_neurons_are_sized_to_one_dendrite_per_neuron():
    budget = tr.dendrite_parameters()
    assert budget == 64 * 786 + 64 * 66 + 5 * 66  # by hand: fan-in + bias + output weight
    lora, _ = tr.build_arm("lora", source_state(), 0)
    added = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert abs(added - budget) / budget < 0.05
    wider, _ = tr.build_arm("wider", source_state(), 0)
    extra = sum(p.numel() for n, p in wider.named_parameters() if n.startswith("extra_"))
    assert abs(extra - budget) / budget < 0.05


@pytest.mark.parametrize("arm", tr.ARMS)
def test_every_arm_starts_as_the_source_trunk_with_the_same_fresh_head(arm):
    src = source_state()
    x = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reference, _ = tr.build_arm("head", src, 3)
    model, overrides = tr.build_arm(arm, src, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if arm == "finetune":
        assert len(trainable) == 6
    else:  # the trunk's own weights are frozen; the head (and what the arm adds) trains
        added = ("lora_", "extra_")
        assert all(
            n.endswith(("5.weight", "5.bias")) or any(a in n for a in added) for n in trainable
        ), trainable
        assert any(n.endswith("5.weight") for n in trainable)
    if arm in ("pb", "gd"):
        assert overrides["max_dendrites"] == 1
    elif arm == "pb_sparse":  # cheap dendrites: up to the default cap, 8 inputs each
        assert overrides == {"method": "sparse", "dendrite_fan_in": 8}
    else:
        assert "include" in overrides  # nothing to grow: only the head is wrapped


def test_few_shot_draws_per_class_and_per_seed():
    from perforate.experiments import datasets

    data = tr.classes(datasets.digits(0), (5, 6, 7, 8, 9))
    assert set(data.y_train.tolist()) == {0, 1, 2, 3, 4}
    a, b = tr.few_shot(data, 3, 0), tr.few_shot(data, 3, 1)
    assert torch.bincount(a.y_train).tolist() == [3] * 5
    assert torch.bincount(a.y_val).tolist() == [20] * 5 or len(a.y_val) < 100
    assert not torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.x_test, data.x_test)


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist")
def test_quick_transfer_runs_resumes_and_reports(tmp_path):
    suite = tr.quick_transfer()
    logs: list[str] = []
    path = tr.run_transfer(suite, results_dir=tmp_path / "results", log=logs.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == sorted(tr.ARMS)
    by = {r["method"]: r for r in rows}
    assert by["head"]["trainable_params"] == 64 * 5 + 5
    assert by["finetune"]["trainable_params"] == 784 * 64 + 64 + 64 * 64 + 64 + 325
    assert len({r["source_test"] for r in rows}) == 1  # one source model per seed
    assert all(0.0 <= r["test"] <= 1.0 and r["epochs"] >= 1 for r in rows)
    logs.clear()
    tr.run_transfer(suite, results_dir=tmp_path / "results", log=logs.append)
    assert "0 runs to do (9 recorded)" in logs[0]
    page = write_report(tmp_path / "results", tmp_path / "docs").read_text()
    assert "## transfer: growing into a trained model" in page
    assert "## When to use dendrites" in page and "10 labels per class: PB" in page
    assert (tmp_path / "docs" / "figures" / "bench_transfer_quick.png").stat().st_size > 5_000
