"""Save/load: bit-exact round trips, atomic writes, refusals with specific errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import perforate
from helpers import grow
from perforate import DendriteConfig


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    )


def grown(gen) -> nn.Module:
    model = perforate.add_dendrites(build(), DendriteConfig(activation="tanh"))
    for i, layer in enumerate(perforate.dendritic_layers(model).values()):
        grow(layer, cycles=i + 1, gen=gen)
    model[0].norm.running_mean.normal_(generator=gen)
    return model


def test_round_trip_into_fresh_plain_model_is_bit_exact(tmp_path, gen):
    model = grown(gen)
    path = tmp_path / "model.safetensors"
    perforate.save(model, path, metadata={"note": "hi"})
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left
    fresh = perforate.load(build(), path)
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert list(saved) == list(loaded)
    for k in saved:
        assert saved[k].dtype == loaded[k].dtype and torch.equal(saved[k], loaded[k]), k
    for name, layer in perforate.dendritic_layers(fresh).items():
        src = perforate.dendritic_layers(model)[name]
        assert torch.equal(layer.dendrite_count, src.dendrite_count)
        assert layer.config == src.config
    x = torch.randn(3, 2, 6, 6)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
    header, _ = perforate.checkpoint.read(path)
    assert header["user"] == {"note": "hi"}
    assert header["layers"]["4"]["dendrites_per_neuron"] == model[4].dendrite_count.tolist()


def test_plain_load_state_dict_resizes_a_fresh_wrapped_model(gen):
    model = grown(gen)
    fresh = perforate.add_dendrites(build(), DendriteConfig(activation="tanh"))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 6, 6)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_mismatched_architecture_lists_every_difference(tmp_path, gen):
    path = tmp_path / "m.safetensors"
    perforate.save(grown(gen), path)
    other = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.Tanh(),
        nn.Linear(6, 3),
        nn.Linear(3, 3),
    )
    with pytest.raises(perforate.CheckpointMismatchError) as err:
        perforate.load(other, path)
    text = str(err.value)
    assert "layer '7' is in the model but not in the checkpoint" in text
    assert "layer '4': 6 neurons here, 5 saved" in text
    assert "tensor '6.base.weight': shape (3, 6) here, (3, 5) saved" in text
    assert not perforate.dendritic_layers(other)  # left as it was


def test_truncated_file_is_refused_and_previous_checkpoint_survives(tmp_path, gen):
    model = grown(gen)
    good = tmp_path / "good.safetensors"
    perforate.save(model, good)
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(perforate.CheckpointError, match="truncated, corrupted"):
        perforate.load(build(), bad)
    perforate.load(build(), good)


def test_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(perforate.CheckpointError, match="never unpickles"):
        perforate.load(build(), path)


def test_foreign_safetensors_and_missing_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    with pytest.raises(perforate.CheckpointError, match="not a perforate checkpoint"):
        perforate.load(build(), path)
    with pytest.raises(perforate.CheckpointError, match="no checkpoint"):
        perforate.load(build(), tmp_path / "nope.safetensors")


def test_newer_format_is_refused(tmp_path, gen):
    path = tmp_path / "m.safetensors"
    model = grown(gen)
    header = perforate.checkpoint.model_structure(model)
    header["format"] = "perforate.model/99"
    tensors = perforate.checkpoint.state_tensors(model)
    save_file(tensors, str(path), metadata={"perforate": json.dumps(header)})
    with pytest.raises(perforate.CheckpointError, match="newer format needs a newer"):
        perforate.load(build(), path)


def test_failed_write_keeps_the_old_file(tmp_path, gen, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = grown(gen)
    perforate.save(model, path)
    before = path.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        perforate.save(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_unwrapped_model_raises(tmp_path):
    with pytest.raises(perforate.NotConvertedError):
        perforate.save(build(), tmp_path / "m.safetensors")


def test_save_mid_dendrite_phase_leaves_candidates_out(tmp_path, gen):
    model = grown(gen)
    for layer in perforate.dendritic_layers(model).values():
        layer.start_dendrite_phase(generator=gen)
    path = tmp_path / "m.safetensors"
    perforate.save(model, path)
    _, tensors = perforate.checkpoint.read(path)
    assert not [k for k in tensors if "candidate" in k]
    fresh = perforate.load(build(), path)
    model.eval()
    fresh.eval()
    x = torch.randn(2, 2, 6, 6)
    assert torch.equal(model(x), fresh(x))


def test_candidate_key_detection_spares_user_modules():
    from perforate.layers import is_candidate_key

    assert is_candidate_key("enc.0.candidates.bank.weight") and is_candidate_key(
        "candidates.bank.bias"
    )
    assert is_candidate_key("fc.candidates.cascade")
    assert not is_candidate_key("candidates.0.weight")  # a user's Sequential named so
    assert not is_candidate_key("mycandidates.weight")
