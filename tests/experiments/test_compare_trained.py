"""Growing into a trained model: head, restart, PB on the frozen trunk, fine-tuning and
LoRA (peft) from one checkpoint, and what each leaves trainable."""

from __future__ import annotations

import torch
from compare_task import write_study
from safetensors.torch import save_file

import perforate
from perforate.experiments import adapt, cli
from perforate.experiments.compare import compare
from perforate.experiments.imports import import_object


def _trained(folder):
    """A 'trained' MLP 10-4-3 saved as safetensors, and its weights."""
    factory = import_object("mymodel:mlp", search=[folder])
    torch.manual_seed(123)
    model = factory(10, 4, 3)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(state, folder / "source.safetensors")
    return factory, state


def test_trained_model_arms(tmp_path):
    study = write_study(tmp_path / "u")
    study.write_text(
        study.read_text().replace(
            'width = "hidden"', 'checkpoint = "source.safetensors"\ntrainable = ["2.*"]'
        )
    )
    factory, source = _trained(tmp_path / "u")
    report = compare(study, out=tmp_path / "o", seeds=2, log_line=None, progress=False)
    assert [a["name"] for a in report["arms"]] == ["head", "restart", "pb", "finetune", "lora"]
    runs = {(r["name"], x["seed"]): x for r in report["arms"] for x in r["runs"]}
    for arm in ("head", "restart", "pb", "finetune"):
        model = perforate.load(factory(10, 4, 3), tmp_path / "o" / runs[(arm, 0)]["model"])
        trunk = dict(model.named_parameters())
        w = trunk.get("0.weight", trunk.get("0.base.weight"))
        frozen = torch.equal(w.detach(), source["0.weight"])
        assert frozen == (arm != "finetune"), arm  # only fine-tuning moves the trunk
    # LoRA at the rank of one dendrite per neuron: 4*(10+2) + 3*(4+2) = 66 parameters
    # over the trunk layer's 10 + 4 per rank -> rank 5, adding 5 * 14 = 70 parameters.
    assert adapt.lora_rank(factory(10, 4, 3), ["2.*"]) == 5
    assert runs[("lora", 0)]["params"] == runs[("head", 0)]["params"] + 70
    assert runs[("restart", 0)]["forked_at"] is not None  # shares the head's first phase
    assert runs[("lora", 0)]["forked_at"] is None and runs[("finetune", 0)]["forked_at"] is None


def test_trained_model_errors(tmp_path, capsys):
    study = write_study(tmp_path / "u", compare='arms = ["plain", "restart", "finetune"]')
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "adapt a trained model: set [model] checkpoint" in capsys.readouterr().err
    text = study.read_text().replace('width = "hidden"', 'checkpoint = "none.safetensors"')
    study.write_text(text)
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "needs trainable" in capsys.readouterr().err
    study.write_text(text.replace('checkpoint = "none', 'trainable = ["x.*"]\ncheckpoint = "none'))
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    _trained(tmp_path / "u")
    study.write_text(study.read_text().replace("none.safetensors", "source.safetensors"))
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "matches no parameter" in capsys.readouterr().err


def test_e133_a_checkpoint_that_leaves_the_trunk_random_is_refused(tmp_path, capsys):
    study = write_study(tmp_path / "u")
    study.write_text(
        study.read_text().replace(
            'width = "hidden"', 'checkpoint = "source.safetensors"\ntrainable = ["2.*"]'
        )
    )
    factory = import_object("mymodel:mlp", search=[tmp_path / "u"])
    other = factory(10, 5, 3)  # hidden 5: only the head's bias fits the hidden-4 model
    save_file(
        {k: v.detach() for k, v in other.state_dict().items()},
        tmp_path / "u" / "source.safetensors",
    )
    assert cli.main(["compare", str(study), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "outside [model] trainable at their random start (0.bias, 0.weight" in err
    assert not (tmp_path / "o" / "runs.jsonl").exists()  # refused before anything is written
