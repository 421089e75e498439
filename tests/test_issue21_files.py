"""Issue 21, the library's defects in files, accounting, pickling, conversion and config:
each test is a row of docs/errors.md."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import perforate
from perforate import files, training_state


def _name(tmp_path, size: int, suffix: str = ".safetensors"):
    return tmp_path / ("c" * (size - len(suffix)) + suffix)


def _names_in(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("size", [200, 230, 250])
def test_e110_long_checkpoint_names_save_twice_and_keep_prev(tmp_path, size):
    path = _name(tmp_path, size)
    assert len(os.fsencode(path.name)) == size
    training_state.save(path, {"controller": {"epoch": 1}})
    training_state.save(path, {"controller": {"epoch": 2}})  # the .prev link: was too long
    state, source = training_state.load_latest(path)
    assert state["controller"]["epoch"] == 2 and source == path
    assert training_state.load(training_state.previous(path))["controller"]["epoch"] == 1
    assert _names_in(tmp_path) == sorted([path.name, path.name + ".prev"])  # no temporary


def test_e110_a_checkpoint_name_whose_prev_cannot_fit_is_refused_before_writing(tmp_path):
    for size in (251, 255):
        with pytest.raises(perforate.CheckpointError, match=r"250 bytes at most"):
            training_state.save(_name(tmp_path, size), {"controller": {"epoch": 1}})
    assert _names_in(tmp_path) == []


@pytest.mark.parametrize("size", [200, 230, 250, 255])
def test_e110_long_model_file_names_save_twice(tmp_path, size):
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    perforate.add_dendrites(model)
    path = _name(tmp_path, size)
    perforate.save(model, path)
    perforate.save(model, path)
    perforate.load(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)), path)
    assert _names_in(tmp_path) == [path.name]


def test_e110_a_name_longer_than_the_file_system_allows_is_refused_clearly(tmp_path):
    with pytest.raises(perforate.CheckpointError, match=r"256 bytes long.*allows 255 bytes"):
        files.atomic_write(_name(tmp_path, 256), b"x")
    # bytes, not characters: 128 two-byte characters are 256 bytes
    with pytest.raises(perforate.CheckpointError, match="256 bytes long"):
        files.atomic_write(tmp_path / ("é" * 128), b"x")
    files.atomic_write(tmp_path / ("é" * 127), b"x")  # 254 bytes: fine
    assert _names_in(tmp_path) == ["é" * 127]


def test_e110_a_controller_checkpointing_under_a_250_byte_name_resumes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    path = _name(tmp_path, 250)
    ctl = perforate.Perforator(
        model,
        perforate.DendriteConfig(patience=5),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        checkpoint_path=path,
    )
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for epoch in range(3):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        ctl.optimizer.step()
        ctl.end_epoch(0.5 + 0.1 * epoch)
    assert training_state.load(training_state.previous(path))["controller"]["epoch"] == 2
    again = perforate.Perforator.resume(
        path, nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), optimizer=torch.optim.SGD
    )
    assert again.epoch == 3


def test_e110_temporaries_of_long_names_are_short_and_found_for_cleanup(tmp_path):
    path = _name(tmp_path, 250)
    prefix = files._temp_prefix(path)
    assert len(os.fsencode(prefix)) + files._TEMP_ROOM <= 255
    stale = tmp_path / f"{prefix}abc12345.tmp"  # a writer killed mid-write
    stale.write_bytes(b"half")
    other = _name(tmp_path, 249)  # another file's temporaries are not this one's
    (tmp_path / f"{files._temp_prefix(other)}zz.tmp").write_bytes(b"x")
    assert files.temp_files(path) == [stale]
    short = tmp_path / "c.safetensors"
    assert files._temp_prefix(short) == ".c.safetensors."  # short names keep readable temps


def test_e111_parameter_report_counts_a_tied_weight_once():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # tied: one 16-value tensor used by two layers
    head = nn.Linear(4, 2)
    model = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), head)
    plain = sum(p.numel() for p in model.parameters())  # 16 + 4 + 4 + 8 + 2
    assert plain == 34
    perforate.add_dendrites(model)
    report = perforate.parameter_report(model)
    assert [r.base for r in report.layers] == [20, 4, 10]  # the shared weight in layer 0 only
    assert (report.base, report.dendrite, report.other, report.total) == (34, 0, 0, 34)


def _grown_mlp(gen: torch.Generator) -> nn.Module:
    from helpers import grow

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3))
    perforate.add_dendrites(model)
    grow(perforate.dendritic_layers(model)["0"], 2, gen)  # cascade, norm, two slots
    return model.eval()


@pytest.mark.parametrize("grown", [False, True])
def test_e112_a_wrapped_or_grown_model_pickles_and_torch_saves(gen, grown):
    import io
    import pickle

    if grown:
        model = _grown_mlp(gen)
    else:
        torch.manual_seed(0)
        model = perforate.add_dendrites(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)))
    x = torch.randn(7, 5, generator=gen)
    with torch.no_grad():
        expected = model(x)
        copy = pickle.loads(pickle.dumps(model))
        assert torch.equal(copy(x), expected)  # same process: bit for bit
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
    if grown:  # the unpickled layer keeps its hook: load_state_dict refreshes the mask
        layer = perforate.dendritic_layers(copy)["0"]
        layer.slot_mask = None
        copy.load_state_dict(model.state_dict())
        assert torch.equal(layer.slot_mask, perforate.dendritic_layers(model)["0"].slot_mask)


def _weight_normed() -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    return nn.Sequential(weight_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 2))


def test_e113_a_weight_norm_linear_is_wrapped_trained_saved_and_restored(tmp_path, gen):
    from torch.nn.utils import parametrize

    model = _weight_normed()
    parametrized = model[0]
    x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    with torch.no_grad():
        before = model(x)
    perforate.add_dendrites(model)
    assert sorted(perforate.dendritic_layers(model)) == ["0", "2"]  # was silently only "2"
    with torch.no_grad():
        assert torch.equal(model(x), before)
    layer = perforate.dendritic_layers(model)["0"]
    assert layer.base is parametrized and parametrize.is_parametrized(layer.base, "weight")
    # g (6), v (24) and the bias (6): the parameters that train, not the computed weight
    assert perforate.parameter_report(model).layers[0].base == 36
    ctl = perforate.Perforator(
        model,
        perforate.DendriteConfig(
            patience=1, switch_mode="patience", dendrite_patience=1, dendrite_max_epochs=2
        ),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    g = parametrized.parametrizations.weight.original0
    while ctl.dendrites_kept == 0:
        in_dendrite_phase = layer.phase.value == "dendrite"
        g_before = g.detach().clone()
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        ctl.optimizer.step()
        # the weight's own parameters freeze in a dendrite phase and train in a neuron phase
        assert torch.equal(g, g_before) == in_dendrite_phase
        ctl.end_epoch(0.5 if ctl.cycle == 0 else 0.6)
        assert ctl.epoch < 20
    assert int(layer.dendrite_count.sum()) > 0 and g.requires_grad
    model.eval()
    path = tmp_path / "m.safetensors"
    perforate.save(model, path)
    again = perforate.load(_weight_normed(), path)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))  # same process: bit for bit
    perforate.remove_dendrites(model)
    assert model[0] is parametrized


@pytest.mark.parametrize(
    "values,received",
    [
        (None, "got NoneType None"),
        ("patience=3", "got str 'patience=3'"),
        ([("patience", 3)], "got list [('patience', 3)]"),
        (3, "got int 3"),
        ("x" * 500, "got str 'xxxxxxxx"),
    ],
)
def test_e114_from_dict_of_something_else_than_a_mapping_says_so(values, received):
    with pytest.raises(perforate.ConfigError, match="needs a mapping") as exc:
        perforate.DendriteConfig.from_dict(values)
    assert received in str(exc.value) and len(str(exc.value)) < 200


def test_e114_from_json_of_text_that_is_no_object():
    from types import MappingProxyType

    with pytest.raises(perforate.ConfigError, match="not JSON text"):
        perforate.DendriteConfig.from_json("patience=3")
    with pytest.raises(perforate.ConfigError, match=r"needs a mapping.*got list"):
        perforate.DendriteConfig.from_json("[1, 2]")
    config = perforate.DendriteConfig.from_dict(MappingProxyType({"patience": 3}))
    assert config.patience == 3  # any Mapping, not only dict
    assert perforate.DendriteConfig.from_json(config.to_json()) == config
