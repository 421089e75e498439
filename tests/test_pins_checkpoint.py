"""Model files: each refusal of a file that does not fit, and loads that must succeed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from helpers import grow
from perforate import CheckpointError, DendriteConfig, files
from perforate.checkpoint import model_structure, state_tensors


def _build() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _grown(gen, cycles=2) -> nn.Sequential:
    model = perforate.add_dendrites(_build(), DendriteConfig())
    for layer in perforate.dendritic_layers(model).values():
        grow(layer, cycles=cycles, gen=gen)
    return model


def _write(path, header, tensors):
    files.write(path, header, tensors)
    return path


def _refusal(model, path) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        perforate.load(model, path)
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)  # left as it was
    return str(info.value)


def test_structure_names_every_layer_by_hand(gen):
    model = _grown(gen)
    s = model_structure(model)
    assert s["format"] == "perforate.model/1" and s["config"] == DendriteConfig().to_dict()
    first = s["layers"]["0"]
    assert (first["kind"], first["neurons"], first["norm"]) == ("Linear", 4, "1")
    assert first["slots"] == model[0].slots == 2
    assert first["dendrites_per_neuron"] == model[0].dendrite_count.tolist()
    assert s["layers"]["3"]["norm"] is None and s["layers"]["3"]["neurons"] == 2
    with pytest.raises(perforate.NotConvertedError):
        model_structure(_build())


def test_loading_into_a_wrapped_model_with_fewer_slots_resizes_it(tmp_path, gen):
    # The slot tensors' shapes follow the file, so they are not compared before loading.
    source = _grown(gen, cycles=3)
    path = tmp_path / "m.safetensors"
    perforate.save(source, path, metadata={"note": "x"})
    target = _grown(torch.Generator().manual_seed(9), cycles=1)
    perforate.load(target, path)
    want, got = source.state_dict(), target.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert files.read(path)[0]["user"] == {"note": "x"}


def test_a_layer_missing_from_the_file_is_listed_not_a_crash(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    del header["layers"]["3"]
    text = _refusal(_grown(gen), _write(tmp_path / "m", header, tensors))
    assert "layer '3' is in the model but not in the checkpoint" in text
    assert "(1 difference(s))" in text


def test_a_layer_entry_that_is_not_a_mapping_is_listed(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    header["layers"]["0"] = [1, 2]
    text = _refusal(_grown(gen), _write(tmp_path / "m", header, tensors))
    assert "layer '0': saved structure is not a mapping" in text
    assert "(1 difference(s))" in text


def test_a_layer_table_that_is_not_a_mapping_is_refused(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    header["layers"] = ["0", "3"]
    assert "the header's layer table is not a mapping" in _refusal(
        _grown(gen), _write(tmp_path / "m", header, tensors)
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "Conv1d", "layer '0': kind Linear here, Conv1d saved"),
        ("neurons", 5, "layer '0': 4 neurons here, 5 saved"),
        ("norm", None, "layer '0': paired norm '1' here, None saved"),
        ("dendrites_per_neuron", [9, 9, 9, 9], "header counts [9, 9, 9, 9] differ"),
        ("slots", "2", "slot count '2' is not a non-negative integer"),
    ],
)
def test_each_header_field_is_checked(tmp_path, gen, field, value, message):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    header["layers"]["0"][field] = value
    text = _refusal(_grown(gen), _write(tmp_path / "m", header, tensors))
    assert message in text and "(1 difference(s))" in text


def test_a_structural_setting_that_differs_is_listed(tmp_path, gen):
    model = _grown(gen)
    path = tmp_path / "m.safetensors"
    perforate.save(model, path)
    other = perforate.add_dendrites(_build(), DendriteConfig(cascade=False))
    text = _refusal(other, path)
    assert "setting 'cascade': False here, True saved" in text


def test_a_model_in_a_dendrite_phase_is_refused(tmp_path, gen):
    model = _grown(gen)
    path = tmp_path / "m.safetensors"
    perforate.save(model, path)
    busy = _grown(gen)
    busy[0].start_dendrite_phase(generator=gen)
    text = _refusal(busy, path)
    assert "layer '0' is in a dendrite phase" in text and "layer '3'" not in text


def test_tensors_missing_extra_or_misshapen_are_each_listed(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    del tensors["0.base.bias"]
    tensors["9.weight"] = torch.zeros(1)
    tensors["3.base.weight"] = torch.zeros(2, 5)
    text = _refusal(_grown(gen), _write(tmp_path / "m", header, tensors))
    assert "tensor '0.base.bias' is missing from the checkpoint" in text
    assert "tensor '9.weight' is in the checkpoint but not in the model" in text
    assert "tensor '3.base.weight': shape (2, 4) here, (2, 5) saved" in text
    assert "(3 difference(s))" in text


def test_an_invalid_saved_config_is_refused_and_the_plain_model_stays_plain(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    header["config"]["patience"] = 0
    plain = _build()
    text = _refusal(plain, _write(tmp_path / "m", header, tensors))
    assert "saved config is invalid: patience must be >= 1" in text
    assert not perforate.dendritic_layers(plain)


def test_a_file_of_another_format_is_refused(tmp_path, gen):
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    header["format"] = "perforate.training/2"
    text = _refusal(_build(), _write(tmp_path / "m", header, tensors))
    assert "'perforate.training/2' is not 'perforate.model/1'" in text


@pytest.mark.parametrize("change", ["extra candidate", "missing slot tensor"])
def test_tensors_sized_on_load_that_do_not_fit_are_refused_by_the_strict_load(
    tmp_path, gen, change
):
    # Slot and candidate tensors are not compared before loading (their shapes follow the
    # file); the strict load_state_dict still refuses one too many or one missing.
    model = _grown(gen)
    header, tensors = model_structure(model), state_tensors(model)
    if change == "extra candidate":
        tensors["0.candidates.bank.weight"] = torch.zeros(16, 3)
        want = 'Unexpected key(s) in state_dict: "0.candidates.bank.weight"'
    else:
        del tensors["0.dendrites.bias"]
        want = 'Missing key(s) in state_dict: "0.dendrites.bias"'
    plain = _build()
    text = _refusal(plain, _write(tmp_path / "m", header, tensors))
    assert want in text
    assert not perforate.dendritic_layers(plain)
