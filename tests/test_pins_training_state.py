"""Training-state files and the process RNG: round trips, refusals, the .prev fallback."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from perforate import CheckpointError, training_state


def _draws() -> tuple:
    return (torch.rand(3).tolist(), random.random(), float(np.random.rand()))


def test_rng_state_round_trips_through_a_file_and_replays_the_same_draws(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    training_state.save(
        tmp_path / "s", {"controller": {}, "rng": training_state.process_rng_state()}
    )
    want = _draws()
    _draws()  # move on
    state = training_state.load(tmp_path / "s")
    training_state.set_process_rng_state(state["rng"])
    assert _draws() == want


@pytest.mark.parametrize("broken", ["torch", "python", "numpy"])
def test_a_malformed_rng_state_changes_no_generator(broken):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    state = training_state.process_rng_state()  # seeds 2
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state[broken] = {"torch": "x", "python": [3, "x"], "numpy": ["bogus"]}[broken]
    with pytest.raises(CheckpointError, match="malformed RNG state in the checkpoint"):
        training_state.set_process_rng_state(state)
    after = _draws()
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    assert after == _draws()  # every generator still where seed 1 left it


def test_a_missing_part_of_the_rng_state_is_refused():
    state = training_state.process_rng_state()
    del state["numpy"]
    with pytest.raises(CheckpointError, match="KeyError"):
        training_state.set_process_rng_state(state)


def test_save_keeps_the_previous_file_and_load_latest_falls_back(tmp_path, caplog):
    path = tmp_path / "ckpt"
    training_state.save(path, {"controller": {"n": 1}})
    training_state.save(path, {"controller": {"n": 2}})
    assert training_state.previous(path) == tmp_path / "ckpt.prev"
    assert training_state.previous("runs/ckpt") == Path("runs/ckpt.prev")  # a str too
    state, found = training_state.load_latest(path)
    assert state["controller"]["n"] == 2 and found == path
    path.write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        state, found = training_state.load_latest(path)
    assert state["controller"]["n"] == 1 and found == tmp_path / "ckpt.prev"
    assert "one checkpoint older" in caplog.text
    training_state.previous(path).write_bytes(b"garbage too")
    with pytest.raises(CheckpointError, match="neither checkpoint can be read"):
        training_state.load_latest(path)


def test_load_latest_without_a_previous_file_raises_the_first_error(tmp_path):
    with pytest.raises(CheckpointError) as info:
        training_state.load_latest(tmp_path / "none")
    assert "neither" not in str(info.value)


def test_a_state_without_a_controller_is_refused(tmp_path):
    training_state.save(tmp_path / "s", {"rng": {}})
    with pytest.raises(CheckpointError, match="holds no controller state"):
        training_state.load(tmp_path / "s")
    training_state.save(tmp_path / "t", {"controller": [1]})
    with pytest.raises(CheckpointError, match="holds no controller state"):
        training_state.load(tmp_path / "t")


def test_nested_values_round_trip(tmp_path):
    state = {"controller": {"a": [1, 2.5, None, "x", (True, torch.arange(3))], "b": {}}}
    back = training_state.load(training_state.save(tmp_path / "s", state))
    a = back["controller"]["a"]
    assert a[:4] == [1, 2.5, None, "x"] and a[4][0] is True
    assert torch.equal(a[4][1], torch.arange(3)) and back["controller"]["b"] == {}


def test_a_state_without_cuda_seeds_cuda_with_a_64_bit_seed_of_its_cpu_state(monkeypatch):
    torch.manual_seed(11)  # before mocking: torch.manual_seed seeds CUDA too
    state = {k: v for k, v in training_state.process_rng_state().items() if k != "cuda"}
    torch.manual_seed(12)
    other = {k: v for k, v in training_state.process_rng_state().items() if k != "cuda"}
    seeds = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds.append)
    for s in (state, state, other):
        training_state.set_process_rng_state(s)
    # torch takes seeds in [0, 2**64): one the same for one file, another for another.
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
    assert seeds[0] == seeds[1] != seeds[2]


def test_a_state_naming_a_tensor_the_file_lacks_is_malformed(tmp_path):
    from perforate import files

    path = tmp_path / "t"
    header = {"format": training_state.FORMAT, "state": {"__tensor__": "s.9"}}
    files.write(path, header, {"s.0": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"malformed training state \(KeyError"):
        training_state.load(path)


def test_load_latest_takes_a_str_and_a_temporary_that_vanished_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    training_state.save(path, {"controller": {"n": 1}})
    gone = tmp_path / ".ckpt.abc.tmp"  # listed, then removed by another process
    monkeypatch.setattr(training_state.files, "temp_files", lambda p: [gone])
    state, found = training_state.load_latest(str(path))
    assert state["controller"]["n"] == 1 and found == path and isinstance(found, Path)


def test_an_rng_state_given_as_plain_lists_is_taken(tmp_path):
    import json

    random.seed(3)
    state = training_state.process_rng_state()
    want = random.random()
    state["python"] = json.loads(json.dumps(state["python"]))  # tuples became lists
    assert isinstance(state["python"], list) and isinstance(state["python"][1], list)
    training_state.set_process_rng_state(state)
    assert random.random() == want


def test_without_cuda_a_gpu_or_cpu_checkpoint_logs_only_what_applies(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = training_state.process_rng_state()
    with caplog.at_level("INFO", logger="perforate.training_state"):
        training_state.set_process_rng_state(state)  # no CUDA part, no CUDA here
        assert caplog.text == ""
        gpu = {**state, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 2}
        training_state.set_process_rng_state(gpu)
    assert "CUDA RNG states of 2 device(s); CUDA is not available here" in caplog.text
    assert "first 0 restored" not in caplog.text and "start fresh" not in caplog.text
