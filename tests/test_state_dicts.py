"""Every stateful part saves itself; old model files still load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import perforate
from helpers import grow
from perforate import DendriteConfig, DendriticLayer, Perforator, files, training_state
from perforate.kinds import KINDS
from perforate.optimizers import OptimizerOwner

FIXTURES = Path(__file__).parent / "fixtures"


def test_model_file_written_by_0_1_0_loads_its_weights_bit_for_bit():
    # Written by perforate 0.1.0 (before the house redesign): a Linear+BatchNorm unit and a
    # Linear, tanh dendrites, selective counts, cascade. Inputs and outputs saved beside it.
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    perforate.load(model, FIXTURES / "model_v0_1_0.safetensors")
    # Loaded tensors are copied, not computed: they match the file bit for bit anywhere.
    stored = load_file(FIXTURES / "model_v0_1_0.safetensors")
    state = model.state_dict()
    assert sorted(state) == sorted(stored)
    assert all(torch.equal(state[k], stored[k]) for k in stored)
    io = load_file(FIXTURES / "model_v0_1_0_io.safetensors")
    model.eval()
    with torch.no_grad():
        # The outputs are computed here but were stored on another machine: float32 matmul
        # and tanh kernels round differently across CPUs (AVX2 vs AVX-512, seen: 3e-8 on
        # outputs below 1). A few ulp of float32 is allowed; a zeroed dendrite weight moves
        # the outputs by 0.008 to 0.1.
        torch.testing.assert_close(model(io["x"]), io["y"], rtol=1e-5, atol=1e-6)
    layers = perforate.dendritic_layers(model)
    assert layers["0"].dendrite_count.tolist() == [1, 2, 1, 1, 2, 1]
    assert layers["0"].config.activation == "tanh" and layers["0"].norm_path == "1"


def _dendrite_phase_layer(gen):
    layer = DendriticLayer(
        nn.Conv1d(2, 3, 3, padding=1), KINDS["Conv1d"], DendriteConfig(candidates_per_neuron=2)
    )
    grow(layer, cycles=2, gen=gen)
    layer.start_dendrite_phase(generator=gen)
    with torch.no_grad():
        layer.candidates.bank.weight.normal_(0, 0.5, generator=gen)
    x = torch.randn(4, 2, 7, generator=gen)
    layer(x).pow(2).sum().backward()
    return layer, x


def test_layer_phase_state_and_weights_restore_a_dendrite_phase_exactly(gen):
    layer, x = _dendrite_phase_layer(gen)
    phase, weights = layer.phase_state_dict(), layer.state_dict()
    fresh = DendriticLayer(
        nn.Conv1d(2, 3, 3, padding=1), KINDS["Conv1d"], DendriteConfig(candidates_per_neuron=2)
    )
    fresh.load_phase_state_dict(phase)
    fresh.load_state_dict(weights)
    assert fresh.phase.value == "dendrite" and fresh.pool_size == 2 and fresh.slots == 2
    for name in layer.stats.FIELDS:
        assert torch.equal(getattr(fresh.stats, name), getattr(layer.stats, name))
    a = layer.installed_activations(x)
    assert torch.equal(
        fresh.candidates.outputs(x, fresh.installed_activations(x)), layer.candidates.outputs(x, a)
    )
    assert torch.equal(fresh(x), layer(x))
    assert {n: p.requires_grad for n, p in fresh.named_parameters()} == {
        n: p.requires_grad for n, p in layer.named_parameters()
    }


def test_statistics_refuse_a_state_of_another_shape(gen):
    layer, _ = _dendrite_phase_layer(gen)
    other = perforate.CandidateStats(3, 3)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(layer.stats.state_dict())


def test_optimizer_owner_restores_moments_and_step_count():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3))
    owner = OptimizerOwner(
        lambda p: torch.optim.Adam(p, lr=0.1),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
    )
    owner.build(nn.Linear(1, 1), [w], candidates=False)
    for _ in range(3):
        owner.optimizer.zero_grad()
        w.pow(2).sum().backward()
        owner.optimizer.step()
    owner.step_scheduler(0.0)
    state = copy.deepcopy(owner.state_dict())  # torch's state dicts share tensors
    w2 = nn.Parameter(w.detach().clone())
    fresh = OptimizerOwner(
        lambda p: torch.optim.Adam(p, lr=0.1),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
    )
    fresh.build(nn.Linear(1, 1), [w2], candidates=False)
    fresh.load_state_dict(state)
    assert fresh.steps_since_evaluation == 3 and fresh.current_lr() == owner.current_lr() == 0.05
    for opt, p in ((owner.optimizer, w), (fresh.optimizer, w2)):
        opt.zero_grad()
        p.pow(2).sum().backward()
        opt.step()
    assert torch.equal(w, w2)


def test_optimizer_owner_rejects_what_is_not_a_factory():
    with pytest.raises(TypeError, match="factory"):
        OptimizerOwner(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(TypeError, match="scheduler must be callable"):
        OptimizerOwner(lambda p: torch.optim.SGD(p, lr=0.1), scheduler=3)


def _run(model, ctl, gen, scores):
    for s in scores:
        x, t = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), t).backward()
        ctl.optimizer.step()
        ctl.end_epoch(s)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))


CFG = DendriteConfig(
    patience=1,
    dendrite_patience=1,
    switch_mode="patience",
    dendrite_max_epochs=2,
    improvement_abs=0.01,
    improvement_rel=0.0,
)
SCORES = [0.1, 0.2, 0.2, 0.0, 0.0, 0.3, 0.3, 0.0, 0.0, 0.31]


def adam(params):
    return torch.optim.Adam(params, lr=0.05)


@pytest.mark.parametrize("stop", [3, 4, 6])
def test_controller_state_dict_round_trip_in_memory(stop):
    ref_model = _model()
    ref = Perforator(ref_model, CFG, optimizer=adam, seed=2)
    _run(ref_model, ref, torch.Generator().manual_seed(1), SCORES)
    model = _model()
    ctl = Perforator(model, CFG, optimizer=adam, seed=2)
    gen = torch.Generator().manual_seed(1)
    _run(model, ctl, gen, SCORES[:stop])
    state = ctl.state_dict()
    model2 = _model()
    ctl2 = Perforator(model2, CFG, optimizer=adam)
    ctl2.load_state_dict(state)
    _run(model2, ctl2, gen, SCORES[stop:])
    strip = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ctl2.history]
    assert strip == [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ref.history]
    a, b = ref_model.state_dict(), model2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_controller_load_of_another_config_fails_before_changing_anything(gen):
    model = _model()
    ctl = Perforator(model, CFG, optimizer=adam)
    _run(model, ctl, gen, SCORES[:4])  # in a dendrite phase
    state = ctl.state_dict()
    other_model = _model()
    other = Perforator(other_model, CFG.replace(patience=3), optimizer=adam)
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    with pytest.raises(perforate.CheckpointMismatchError, match="'patience': 3 here, 1 saved"):
        other.load_state_dict(state)
    after = other_model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert other.epoch == 0 and other.phase.value == "neuron"


def test_training_checkpoint_of_0_1_0_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "old.safetensors"
    files.write(path, {"format": "perforate.training/1", "controller": {}}, {})
    with pytest.raises(perforate.CheckpointError, match=r"perforate 0\.1\.0.*start again"):
        training_state.load(path)


def test_training_state_round_trips_nested_values_bit_for_bit(tmp_path):
    state = {
        "a": [1, 2.5, None, "x", (True, torch.arange(3))],
        7: {"t": torch.randn(2, 2)},
        "empty": {},
        "controller": {"epoch": 1},
    }
    training_state.save(tmp_path / "s.safetensors", state)
    back = training_state.load(tmp_path / "s.safetensors")
    assert back["a"][:4] == [1, 2.5, None, "x"] and back["a"][4][0] is True
    assert torch.equal(back["a"][4][1], state["a"][4][1])
    assert torch.equal(back[7]["t"], state[7]["t"]) and back["empty"] == {}
