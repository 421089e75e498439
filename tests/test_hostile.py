"""Hostile inputs and faults, library side: docs/errors.md rows 43 onward, one test each.

Each test is named `test_eNN_...` after its row; `test_every_row_has_its_test` keeps the
page and the tests in step.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import perforate
from helpers import grow
from perforate import DendriteConfig, Perforator, files, training_state

DOC = Path(__file__).parent.parent / "docs" / "errors.md"
CFG = DendriteConfig(
    patience=1, dendrite_patience=1, switch_mode="patience", dendrite_max_epochs=2, max_retries=1
)


def build(hidden=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def adam(params):
    return torch.optim.Adam(params, lr=0.05)


def epochs(model, ctl, scores, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for s in scores:
        x, t = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        ctl.optimizer.step()
        ctl.end_epoch(s)


@pytest.fixture
def ckpt(tmp_path):
    """A training checkpoint written inside a dendrite phase, after one install."""
    model = build()
    path = tmp_path / "c.safetensors"
    ctl = Perforator(model, CFG, optimizer=adam, checkpoint_path=path, seed=0)
    epochs(model, ctl, [0.1, 0.1, 0.0, 0.0, 0.5, 0.5, 0.0])
    assert ctl.phase.value == "dendrite" and sum(map(sum, ctl.dendrite_counts().values()))
    return path


def edited(path, edit):
    """A copy of training checkpoint `path` with `edit(state)` applied."""
    state = training_state.load(path)
    edit(state)
    out = path.with_name("edited.safetensors")
    training_state.save(out, state)
    return out


@pytest.fixture
def model_file(tmp_path, gen):
    model = perforate.add_dendrites(build())
    for layer in perforate.dendritic_layers(model).values():
        grow(layer, cycles=2, gen=gen)
    path = tmp_path / "m.safetensors"
    perforate.save(model, path)
    return path, model


def rewrite_model_file(path, edit_header=None, edit_tensors=None):
    header, tensors = files.read(path)
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    out = path.with_name("edited.safetensors")
    files.write(out, header, tensors)
    return out


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before):
    after = model.state_dict()
    return sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


# --- writes ---------------------------------------------------------------------------
def test_e43_stale_temp_files_of_a_killed_writer_are_removed_at_resume(ckpt):
    stale = ckpt.parent / f".{ckpt.name}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    Perforator.resume(ckpt, build(), optimizer=adam)
    assert not stale.exists() and ckpt.is_file()


def test_e44_prev_is_always_the_complete_previous_checkpoint(ckpt):
    prev = training_state.previous(ckpt)
    assert training_state.load(ckpt)["controller"]["epoch"] == 7
    assert training_state.load(prev)["controller"]["epoch"] == 6


def test_e45_checkpoint_path_that_is_a_directory_is_refused_untouched(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    with pytest.raises(perforate.ConfigError, match="is a directory"):
        Perforator(build(), CFG, optimizer=adam, checkpoint_path=d)
    with pytest.raises(perforate.CheckpointError, match="is a directory"):
        files.atomic_write(d, b"x")
    assert (d / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_e46_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        files.atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_e47_a_failed_write_leaves_the_old_file_and_prev_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    training_state.save(path, {"controller": {"epoch": 1}})
    training_state.save(path, {"controller": {"epoch": 2}})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        training_state.save(path, {"controller": {"epoch": 3}})
    monkeypatch.undo()
    assert training_state.load(path)["controller"]["epoch"] == 2
    assert training_state.load(training_state.previous(path))["controller"]["epoch"] == 1
    assert files.temp_files(path) == [] and not list(tmp_path.glob("*.prev.tmp"))


def test_e48_concurrent_writers_to_one_path_never_fail_and_leave_a_valid_file(tmp_path):
    path = tmp_path / "c.safetensors"
    errors = []

    def writer(k):
        try:
            for i in range(15):
                training_state.save(path, {"controller": {"epoch": k * 100 + i}})
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert training_state.load(path)["controller"]["epoch"] % 100 == 14


def test_e49_reads_never_pair_one_versions_header_with_anothers_tensors(tmp_path):
    path = tmp_path / "f.safetensors"
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            files.write(path, {"format": "x", "v": i}, {"t": torch.full((2000,), float(i))})
            i += 1

    files.write(path, {"format": "x", "v": -1}, {"t": torch.full((2000,), -1.0)})
    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            header, tensors = files.read(path)
            assert torch.all(tensors["t"] == header["v"])
    finally:
        stop.set()
        t.join()


# --- resume ---------------------------------------------------------------------------
def test_e50_resume_without_any_checkpoint_says_so(tmp_path):
    with pytest.raises(perforate.CheckpointError, match="no checkpoint at"):
        Perforator.resume(tmp_path / "none.safetensors", build(), optimizer=adam)


def test_e51_resume_keeps_checkpointing_to_the_same_path(ckpt):
    model = build()
    ctl = Perforator.resume(ckpt, model, optimizer=adam)
    assert ctl.checkpoint_path == ckpt
    epochs(model, ctl, [0.0])
    assert training_state.load(ckpt)["controller"]["epoch"] == 8


def test_e52_resume_with_another_optimizer_class_fails_and_leaves_the_model_plain(ckpt):
    model = build()
    before = state_of(model)
    with pytest.raises(perforate.CheckpointMismatchError, match=r"Adam optimizer.*SGD"):
        Perforator.resume(ckpt, model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert not perforate.dendritic_layers(model) and same_state(model, before)


def test_e53_resume_into_a_wider_model_leaves_it_plain_and_unchanged(ckpt):
    model = build(hidden=5)
    before = state_of(model)
    with pytest.raises(perforate.CheckpointMismatchError, match="shape"):
        Perforator.resume(ckpt, model, optimizer=adam)
    assert not perforate.dendritic_layers(model) and same_state(model, before)


@pytest.mark.parametrize(
    "field,value", [("slots", 10**8), ("pool", 10**8), ("slots", -1), ("pool", 1.5), ("slots", "2")]
)
def test_e54_edited_slot_or_pool_sizes_fail_before_any_allocation(ckpt, field, value):
    def edit(state):
        state["controller"]["layers"]["0"][field] = value

    with pytest.raises(perforate.CheckpointMismatchError, match="layer '0'"):
        Perforator.resume(edited(ckpt, edit), build(), optimizer=adam)


@pytest.mark.parametrize("value", [-1, 99, 10**12])
def test_e55_edited_dendrite_counts_outside_the_slots_are_refused(ckpt, value):
    def edit(state):
        state["controller"]["model"]["0.dendrite_count"][0] = value

    with pytest.raises(perforate.CheckpointMismatchError, match="dendrite counts"):
        Perforator.resume(edited(ckpt, edit), build(), optimizer=adam)


def test_e56_fractional_dendrite_counts_are_refused(ckpt):
    def edit(state):
        state["controller"]["model"]["0.dendrite_count"] = torch.full((4,), 0.5)

    with pytest.raises(perforate.CheckpointMismatchError, match="int64"):
        Perforator.resume(edited(ckpt, edit), build(), optimizer=adam)


@pytest.mark.parametrize("value", [-3, "7", 2.5, None])
def test_e57_edited_counters_are_refused(ckpt, value):
    def edit(state):
        state["controller"]["epoch"] = value

    with pytest.raises(perforate.CheckpointError, match=r"counters|malformed"):
        Perforator.resume(edited(ckpt, edit), build(), optimizer=adam)


@pytest.mark.parametrize("key", ["switching", "layers", "history", "optimizers", "rng"])
def test_e58_a_missing_part_of_the_state_is_a_checkpoint_error(ckpt, key):
    def edit(state):
        holder = state if key == "rng" else state["controller"]
        del holder[key]

    model = build()
    before = state_of(model)
    with pytest.raises(perforate.CheckpointError):
        Perforator.resume(edited(ckpt, edit), model, optimizer=adam)
    assert not perforate.dendritic_layers(model) and same_state(model, before)


def test_e59_deeply_nested_header_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    nested = "[" * 100_000 + "]" * 100_000
    meta = json.dumps({"perforate": '{"format": "perforate.training/2", "state": ' + nested + "}"})
    header = json.dumps({"__metadata__": json.loads(meta)}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(perforate.CheckpointError):
        training_state.load(path)


@pytest.mark.parametrize(
    "blob", [b"", b"1234", struct.pack("<Q", 10**15) + b"{}", struct.pack("<Q", 2) + b"[]"]
)
def test_e60_headers_that_lie_about_their_size_or_shape_are_refused(tmp_path, blob):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(perforate.CheckpointError, match="not a readable"):
        files.read(path)


def test_e61_a_checkpoint_of_another_controller_state_version_is_refused(ckpt):
    def edit(state):
        state["controller"]["version"] = 99

    with pytest.raises(perforate.CheckpointError, match="version 99"):
        Perforator.resume(edited(ckpt, edit), build(), optimizer=adam)


def test_e62_load_state_dict_of_something_else_is_a_checkpoint_error():
    ctl = Perforator(build(), CFG, optimizer=adam)
    for junk in (None, [], {"version": 2}):
        with pytest.raises(perforate.CheckpointError):
            ctl.load_state_dict(junk)
    assert ctl.epoch == 0


# --- model files ----------------------------------------------------------------------
def test_e63_model_file_with_an_edited_slot_count_is_refused_unchanged(model_file):
    path, _ = model_file

    def edit(header):
        header["layers"]["0"]["slots"] = 10**8

    model = build()
    before = state_of(model)
    with pytest.raises(perforate.CheckpointMismatchError, match="slots"):
        perforate.load(model, rewrite_model_file(path, edit))
    assert not perforate.dendritic_layers(model) and same_state(model, before)


def test_e64_model_file_whose_counts_disagree_with_its_tensors_is_refused(model_file):
    path, _ = model_file

    def edit(header):
        header["layers"]["0"]["dendrites_per_neuron"] = [0, 0, 0, 0]

    with pytest.raises(perforate.CheckpointMismatchError, match="differ from the tensor"):
        perforate.load(build(), rewrite_model_file(path, edit))


def test_e65_model_file_with_counts_beyond_its_slots_is_refused(model_file):
    path, _ = model_file

    def edit(tensors):
        tensors["0.dendrite_count"] = torch.full((4,), 7, dtype=torch.int64)

    def header(h):
        h["layers"]["0"]["dendrites_per_neuron"] = [7] * 4

    with pytest.raises(perforate.CheckpointMismatchError, match="outside"):
        perforate.load(build(), rewrite_model_file(path, header, edit))


def test_e66_loading_into_a_model_wrapped_with_other_settings_names_them(model_file):
    path, _ = model_file
    model = perforate.add_dendrites(build(), DendriteConfig(activation="tanh"))
    before = state_of(model)
    with pytest.raises(perforate.CheckpointMismatchError, match="'activation': 'tanh' here"):
        perforate.load(model, path)
    assert same_state(model, before)


def test_e67_model_file_with_an_invalid_saved_config_is_a_checkpoint_error(model_file):
    path, _ = model_file

    def edit(header):
        header["config"]["activation"] = "relu6"

    model = build()
    with pytest.raises(perforate.CheckpointError, match="saved config is invalid"):
        perforate.load(model, rewrite_model_file(path, edit))
    assert not perforate.dendritic_layers(model)


def test_e68_failed_load_into_a_wrapped_model_leaves_it_exactly_as_it_was(model_file, gen):
    path, _ = model_file
    model = perforate.add_dendrites(build())
    grow(perforate.dendritic_layers(model)["2"], cycles=1, gen=gen)
    before = state_of(model)

    def edit(tensors):
        tensors["2.output_weight"] = tensors["2.output_weight"][:, :1].contiguous()

    with pytest.raises(perforate.CheckpointMismatchError):
        perforate.load(model, rewrite_model_file(path, edit_tensors=edit))
    assert same_state(model, before)


@pytest.mark.parametrize("meta", ["not json", json.dumps([1, 2]), json.dumps({"no": "format"})])
def test_e69_model_file_with_a_broken_structure_header_is_refused(tmp_path, meta):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(1)}, path, metadata={"perforate": meta})
    with pytest.raises(perforate.CheckpointError, match=r"header|JSONDecodeError"):
        perforate.load(build(), path)


# --- the controller -------------------------------------------------------------------
@pytest.mark.parametrize("score", [True, "0.5", b"1", torch.tensor(True)])
def test_e70_scores_must_be_real_numbers(score):
    model = build()
    ctl = Perforator(model, CFG, optimizer=adam)
    with pytest.raises(perforate.ScoreError, match="real number"):
        epochs(model, ctl, [score])


@pytest.mark.parametrize("every", [0, True, 1.5, "2"])
def test_e71_checkpoint_every_must_be_a_positive_integer(every):
    with pytest.raises(perforate.ConfigError, match="checkpoint_every"):
        Perforator(build(), CFG, optimizer=adam, checkpoint_every=every)


def test_e72_negative_output_weight_init_is_refused():
    with pytest.raises(perforate.ConfigError, match="output_weight_init must be >= 0"):
        DendriteConfig(output_weight_init=-0.1)


@pytest.mark.parametrize("layer", [nn.Linear(3, 0), nn.Linear(0, 2)])
def test_e73_layers_without_neurons_or_inputs_are_unsupported(layer):
    model = nn.Sequential(layer, nn.Linear(2, 2)) if layer.out_features else nn.Sequential(layer)
    with pytest.raises(perforate.UnsupportedLayerError, match="has no neuron"):
        perforate.add_dendrites(model)
    if layer.out_features:
        wrapped = perforate.add_dendrites(model, DendriteConfig(skip_unsupported=True))
        assert list(perforate.dendritic_layers(wrapped)) == ["1"]


def test_e74_a_dendrite_epoch_whose_every_batch_was_non_finite_says_so():
    model = build()
    ctl = Perforator(model, CFG, optimizer=adam)
    epochs(model, ctl, [0.1, 0.1])
    assert ctl.phase.value == "dendrite"
    x = torch.randn(8, 3)
    ctl.optimizer.zero_grad()
    (model(x).sum() * float("nan")).backward()
    ctl.optimizer.step()
    with pytest.raises(perforate.PhaseError, match=r"every batch.*non-finite"):
        ctl.end_epoch(0.0)


def test_e75_a_model_changed_under_a_dendrite_phase_is_named():
    model = build()
    ctl = Perforator(model, CFG, optimizer=adam)
    epochs(model, ctl, [0.1, 0.1])
    ctl.optimizer.step()
    ctl.layers["0"].start_neuron_phase()  # by hand, behind the controller's back
    with pytest.raises(perforate.PhaseError, match="layer '0' has no candidates"):
        ctl.end_epoch(0.0)


@pytest.mark.parametrize("kw", ["candidate_optimizer", "scheduler", "wrapper"])
def test_e76_other_factories_must_be_callable(kw):
    with pytest.raises(TypeError, match=f"{kw} must be callable"):
        Perforator(build(), CFG, optimizer=adam, **{kw: 3})


# --- the page -------------------------------------------------------------------------
def test_every_row_has_its_test():
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", DOC.read_text(), re.M)}
    here = "".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    tested = {int(m) for m in re.findall(r"^def test_e(\d+)_", here, re.M)}
    assert tested <= rows, f"rows missing in docs/errors.md: {sorted(tested - rows)}"
    assert {r for r in rows if r >= 43} == tested, sorted({r for r in rows if r >= 43} - tested)
    assert len(rows) >= 80


def test_e92_load_into_a_model_in_a_dendrite_phase_is_refused_unchanged(model_file, gen):
    path, _ = model_file
    model = perforate.add_dendrites(build())
    perforate.dendritic_layers(model)["0"].start_dendrite_phase(generator=gen)
    before = state_of(model)
    with pytest.raises(perforate.CheckpointMismatchError, match="in a dendrite phase"):
        perforate.load(model, path)
    assert same_state(model, before) and perforate.dendritic_layers(model)["0"].pool_size
