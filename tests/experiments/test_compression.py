"""Compression as studies: the distillation loss by hand, the teacher's logits packed
beside the labels, and PB judged against both width ladders at its own size."""

from __future__ import annotations

import math

import pytest
import torch

import perforate
from perforate.experiments import datasets, models, suites
from perforate.experiments.bench_report import Studied, compression_findings
from perforate.experiments.compare import build_report


def test_distillation_loss_by_hand():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0.0, 1.0])
    packed = torch.cat([labels[:, None], teacher], dim=1)  # as `distilled` packs targets
    student = torch.tensor([[0.0, 0.0]])
    t, alpha = 2.0, 0.25
    loss = suites.Distillation(t, alpha)(student, packed[:1])
    p = torch.softmax(teacher[0] / t, -1)  # teacher at T: (e/(e+1), 1/(e+1))
    kl = float((p * (p.log() - math.log(0.5))).sum())  # student at T is uniform
    assert float(loss) == pytest.approx(alpha * t * t * kl + (1 - alpha) * math.log(2.0), rel=1e-6)
    # Row 1's teacher is uniform like the student: only the cross-entropy remains.
    loss1 = suites.Distillation(t, alpha)(student, packed[1:])
    assert float(loss1) == pytest.approx((1 - alpha) * math.log(2.0), rel=1e-6)
    # Plain labels (validation, test, or a study without a teacher): cross-entropy alone.
    assert float(suites.Distillation(t, alpha)(student, torch.tensor([1]))) == pytest.approx(
        math.log(2.0)
    )


def test_distilled_packs_the_seeds_teacher_logits_beside_the_labels(tmp_path):
    torch.manual_seed(0)
    teacher = perforate.add_dendrites(models.mlp(64, 32, 10), perforate.DendriteConfig())
    path = tmp_path / "models" / "plain" / "seed3.safetensors"
    path.parent.mkdir(parents=True)
    perforate.save(teacher, path)
    data = suites.distilled(str(tmp_path), 3, "digits", hidden=32)
    _, target = data["train"]
    splits = datasets.digits(0)
    assert torch.equal(target[:, 0].long(), splits.y_train)
    with torch.no_grad():
        assert torch.allclose(target[:, 1:], teacher(splits.x_train), atol=1e-6)
    assert torch.equal(data["val"][1], splits.y_val)  # scored on labels
    with pytest.raises(perforate.PerforateError, match=r"no teacher model .*seed4"):
        suites.distilled(str(tmp_path), 4, "digits", hidden=32)


def record(arm: str, seed: int, test: float, params: int, width: int = 8) -> dict:
    return {
        "arm": arm, "seed": seed, "val": test, "test": test, "params": params,
        "base_params": params, "dendrite_params": 0, "dendrites": int(arm == "pb"),
        "dendrites_per_neuron": 0.0, "epochs": 3, "cycles": 0, "end": "early_stopping",
        "forked_at": None, "model": None, "seconds": 1.0, "own_seconds": 1.0, "width": width,
        "curve": [[1.0, test, test]], "phases": [["n", "done"]], "best": [test],
    }  # fmt: skip


def test_pb_is_judged_against_both_ladders_at_its_own_size(tmp_path):
    """Labels: ladder 0.80 at 100 and 0.84 at 400 parameters; distilled: 0.79 and 0.87.
    PB at 200 parameters (half way in log parameters) on either loss scores 0.83."""
    _, kd_study = suites.studies("compression", tmp_path)
    labels_study = suites.studies("fashion_mlp", tmp_path)[0]

    def studied(study, suite, low, high):
        recs = []
        for s in range(3):
            wobble = 0.001 * s * s
            recs += [
                record("plain", s, low + wobble, 100),
                record("ladder@32", s, high + wobble, 400, 32),
            ]
            recs += [record("restart", s, low + wobble, 100), record("pb", s, 0.83 + wobble, 200)]
        arms = [a for a in study.arms() if a.name in {r["arm"] for r in recs}]
        return Studied(
            suites.SUITES[suite], study, recs, build_report(study, arms, recs, [0, 1, 2])
        )

    kd = studied(kd_study, "compression", 0.79, 0.87)
    labels = studied(labels_study, "fashion_mlp", 0.80, 0.84)
    found, alone = compression_findings(kd, labels)
    on_labels, on_kd = found
    # PB on the distillation loss: 0.83 against its own ladder at 200 (0.83) and the
    # label-trained one (0.82): 0 (inside the rope) and +0.01 (beyond it), every seed alike.
    own, other = on_kd.basis[1], on_kd.basis[2]
    assert (own["mean"], other["mean"]) == pytest.approx((0.0, 0.01), abs=1e-9)
    assert (own["verdict"], other["verdict"]) == ("equivalent", "better")
    assert other["reference"] == "ladder (labels)" and on_kd.basis[0]["verdict"] == "better"
    assert on_labels.basis[2]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert on_kd.state == on_labels.state == "yes"
    # Distillation alone per width: 0.79 - 0.80 at width 8 (plain), 0.87 - 0.84 at 32.
    assert {c["width"]: round(c["mean"], 6) for c in alone} == {8: -0.01, 32: 0.03}
    assert {c["width"]: c["verdict"] for c in alone} == {8: "worse", 32: "better"}
