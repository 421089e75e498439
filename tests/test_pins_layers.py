"""The dendritic layer at the edges the wider tests skip: exactly one and two slots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import grow, reference_forward
from perforate import DendriteConfig, DendriticLayer
from perforate.kinds import KINDS


@pytest.mark.parametrize("cycles", [1, 2])
@pytest.mark.parametrize("base", ["linear", "conv1d"])
def test_one_and_two_slots_with_cascade_match_the_reference(cycles, base, gen):
    module = nn.Linear(4, 3) if base == "linear" else nn.Conv1d(2, 3, 3, padding=1)
    x = (
        torch.randn(5, 4, dtype=torch.float64)
        if base == "linear"
        else torch.randn(2, 2, 6, dtype=torch.float64)
    )
    layer = DendriticLayer(module.double(), KINDS[type(module).__name__], DendriteConfig())
    grow(layer, cycles=cycles, gen=gen)
    assert layer.slots == cycles and layer.cascade_weight is not None
    if cycles == 2:
        assert float(layer.cascade_weight[1, 0].abs().sum()) > 0  # slot 1 hears slot 0
    y_ref, acts_ref, _ = reference_forward(layer, x)
    torch.testing.assert_close(layer(x), y_ref, rtol=1e-12, atol=1e-12)
    a = layer.installed_activations(x)
    ax = layer.kind.group_axis()
    for c, acts in acts_ref.items():
        for j, a_ref in enumerate(acts):
            got = a.select(ax, j)[..., c] if ax == -2 else a[:, j, c]
            torch.testing.assert_close(got, a_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("inputs_train", [False, True])
def test_a_neuron_phase_trains_output_weights_and_inputs_as_configured(inputs_train, gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    layer.start_dendrite_phase(candidates=2, generator=gen)
    layer.install(torch.tensor([0, 1]))
    layer.start_dendrite_phase(candidates=2, generator=gen)
    assert not layer.output_weight.requires_grad  # frozen while candidates train
    layer.start_neuron_phase(dendrite_inputs_train=inputs_train)
    assert layer.output_weight.requires_grad
    assert layer.dendrites.weight.requires_grad is inputs_train
    assert layer.dendrites.bias.requires_grad is inputs_train
    assert layer.base.weight.requires_grad


def test_loading_a_neuron_phase_state_ends_a_dendrite_phase(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    state = layer.phase_state_dict()  # a neuron phase, no slot
    layer.start_dendrite_phase(candidates=2, generator=gen)
    assert layer.candidates is not None and not layer.base.weight.requires_grad
    layer.load_phase_state_dict(state)
    assert layer.phase.value == "neuron" and layer.candidates is None
    assert layer.base.weight.requires_grad


def test_the_pool_size_is_zero_outside_a_dendrite_phase(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    assert layer.pool_size == 0
    layer.start_dendrite_phase(candidates=3, generator=gen)
    assert layer.pool_size == 3
    layer.install(torch.tensor([0, 2]))
    layer.start_neuron_phase()
    assert layer.pool_size == 0


def test_fewer_slots_clamp_the_counts(gen):
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    grow(layer, cycles=3, gen=gen)
    assert layer.slots == 3 and int(layer.dendrite_count.max()) == 3
    layer.set_slots(1)
    assert layer.dendrite_count.max() <= 1 and layer.slots == 1
    layer.set_slots(0)
    assert layer.dendrite_count.tolist() == [0, 0] and layer.output_weight is None


def test_an_appended_dendrite_takes_cascade_weights_from_earlier_slots_only():
    layer = DendriticLayer(nn.Linear(3, 1), KINDS["Linear"], DendriteConfig())
    for _ in range(2):
        layer.append_dendrites([0], torch.ones(1, 3), torch.zeros(1), torch.zeros(1))
    layer.append_dendrites(
        [0], torch.ones(1, 3), torch.zeros(1), torch.zeros(1), cascade=torch.tensor([[2.0, 3.0]])
    )
    assert layer.cascade_weight[2, :, 0].tolist() == [2.0, 3.0, 0.0]
    layer2 = DendriticLayer(nn.Linear(3, 1), KINDS["Linear"], DendriteConfig())
    layer2.append_dendrites([0], torch.ones(1, 3), torch.zeros(1), torch.zeros(1))
    layer2.append_dendrites(
        [0], torch.ones(1, 3), torch.zeros(1), torch.zeros(1), cascade=torch.tensor([[5.0, 7.0]])
    )
    assert layer2.cascade_weight[1, :, 0].tolist() == [5.0, 0.0]  # only slot 0 is earlier


def test_private_names_are_not_read_through_to_the_base():
    layer = DendriticLayer(nn.Linear(3, 2), KINDS["Linear"], DendriteConfig())
    assert layer.out_features == 2 and layer.in_features == 3
    layer.base._secret = 1
    with pytest.raises(AttributeError):
        getattr(layer, "_secret")  # noqa: B009 (the attribute read is the test)
    with pytest.raises(AttributeError, match="wrapping Linear"):
        getattr(layer, "no_such_thing")  # noqa: B009
