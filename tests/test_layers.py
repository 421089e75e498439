"""The dendritic layer against a per-neuron reference loop, and its phase semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from helpers import grow, reference_forward
from perforate import DendriteConfig, DendriticLayer
from perforate.kinds import KINDS

CASES = {
    "linear2d": (lambda: nn.Linear(6, 5), (7, 6)),
    "linear3d": (lambda: nn.Linear(6, 5), (3, 4, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2), (2, 3, 6, 5)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), (2, 2, 4, 5, 3)),
}


def make_layer(name: str, **cfg) -> tuple[DendriticLayer, torch.Tensor]:
    build, shape = CASES[name]
    base = build().double()
    kind = KINDS[type(base).__name__]
    layer = DendriticLayer(base, kind, DendriteConfig(**cfg), path=name)
    return layer, torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("cascade", [True, False])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_batched_forward_matches_reference(name, cascade, activation, gen):
    layer, x = make_layer(name, cascade=cascade, activation=activation)
    grow(layer, cycles=3, gen=gen)
    layer.start_dendrite_phase(candidates=3, generator=gen)
    with torch.no_grad():
        layer.candidates.bank.weight.normal_(0, 0.5, generator=gen)
        if layer.candidates.cascade is not None:
            layer.candidates.cascade.normal_(0, 1, generator=gen)
    assert layer.slots >= 2 and int(layer.dendrite_count.min()) < layer.slots  # selective
    y_ref, acts_ref, cand_ref = reference_forward(layer, x)
    y = layer(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    a = layer.installed_activations(x)
    v = layer.candidates.outputs(x, a)
    ax = layer.kind.group_axis()
    for c, acts in acts_ref.items():
        for j, a_ref in enumerate(acts):
            got = a.select(ax, j)[..., c] if ax == -2 else a[:, j, c]
            torch.testing.assert_close(got, a_ref, rtol=1e-12, atol=1e-12)
    for (p, c), v_ref in cand_ref.items():
        got = v.select(ax, p)[..., c] if ax == -2 else v[:, p, c]
        torch.testing.assert_close(got, v_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_install_preserves_function_exactly(name, gen):
    layer, x = make_layer(name)
    y0 = layer(x).detach()
    for _ in range(3):
        layer.start_dendrite_phase(generator=gen)
        torch.testing.assert_close(layer(x).detach(), y0, rtol=0, atol=0)
        choice = torch.randint(-1, layer.pool_size, (layer.neurons,), generator=gen)
        choice[0] = 1
        layer.install(choice)
        assert torch.equal(layer(x).detach(), y0)


def test_nonzero_output_weight_is_compensated_through_the_bias(gen):
    layer, x = make_layer("linear2d", output_weight_init=0.5)
    y0 = layer(x).detach()
    layer.start_dendrite_phase(generator=gen)
    layer(x).sum().backward()  # one batch of statistics: mean V over exactly these patterns
    layer.install(torch.tensor([0, 1, 2, -1, 3]))
    y1 = layer(x).detach()
    assert not torch.allclose(y1, y0)  # per pattern the function moves...
    torch.testing.assert_close(y1.mean(0), y0.mean(0), rtol=0, atol=1e-12)  # ...not on average
    torch.testing.assert_close(
        layer.output_weight[0], torch.tensor([0.5, 0.5, 0.5, 0, 0.5], dtype=torch.float64)
    )


def test_nonzero_output_weight_without_bias_raises(gen):
    layer = DendriticLayer(
        nn.Linear(3, 2, bias=False), KINDS["Linear"], DendriteConfig(output_weight_init=1.0)
    )
    layer.start_dendrite_phase(generator=gen)
    layer(torch.randn(4, 3)).sum().backward()
    with pytest.raises(perforate.InstallError, match="no bias"):
        layer.install(torch.tensor([0, 0]))


@pytest.mark.parametrize("name", ["linear3d", "conv2d"])
def test_perforation_blocks_input_gradient_and_leaves_base_gradients(name, gen):
    layer, x = make_layer(name)
    grow(layer, cycles=2, gen=gen)
    x1 = x.clone().requires_grad_(True)
    y = layer(x1)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    # The same computation without dendrites: a bare copy of the base layer.
    x2 = x.clone().requires_grad_(True)
    bare = layer.base
    w_grad = bare.weight.grad.clone()
    bare.zero_grad()
    bare(x2).backward(upstream)
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(w_grad, bare.weight.grad)
    assert layer.output_weight.grad is not None and layer.output_weight.grad.abs().sum() > 0
    assert layer.dendrites.weight.grad is None  # frozen by default


def test_without_perforation_error_flows_through_dendrites(gen):
    layer, x = make_layer("linear2d", perforate=False)
    grow(layer, cycles=1, gen=gen)
    x1 = x.clone().requires_grad_(True)
    layer(x1).sum().backward()
    x2 = x.clone().requires_grad_(True)
    layer.base(x2).sum().backward()
    assert not torch.allclose(x1.grad, x2.grad)


def test_dendrite_phase_output_unchanged_and_only_candidates_get_grads(gen):
    layer, x = make_layer("conv2d")
    grow(layer, cycles=2, gen=gen)
    y_neuron = layer(x).detach()
    layer.start_dendrite_phase(generator=gen)
    y = layer(x)
    assert torch.equal(y.detach(), y_neuron)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        is_candidate = name.startswith("candidate")
        assert p.requires_grad == is_candidate, name
        assert (p.grad is not None) == is_candidate, name
    assert layer.candidates.bank.weight.grad.abs().sum() > 0
    assert layer.candidates.cascade.grad.abs().sum() > 0
    assert int(layer.stats.count) == x.shape[0] * y.shape[2] * y.shape[3]


def test_phase_switches_restore_user_trainability(gen):
    layer, _ = make_layer("linear2d")
    layer.base.bias.requires_grad_(False)  # the user froze it
    grow(layer, cycles=1, gen=gen)
    assert not layer.dendrites.weight.requires_grad  # inputs frozen unless a rule says so
    layer.start_dendrite_phase(generator=gen)
    assert not layer.base.weight.requires_grad and not layer.output_weight.requires_grad
    layer.start_neuron_phase(dendrite_inputs_train=True)
    assert layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.output_weight.requires_grad
    assert layer.dendrites.weight.requires_grad and layer.cascade_weight.requires_grad
    layer.start_dendrite_phase(generator=gen)
    layer.start_neuron_phase()  # keeps the rule's last choice
    assert layer.dendrites.weight.requires_grad
    assert layer.candidates is None and layer.stats is None
    layer.start_inference()
    assert not any(p.requires_grad for p in layer.parameters())
    with pytest.raises(perforate.PhaseError, match="inference"):
        layer.start_dendrite_phase()


def test_install_validates_choice(gen):
    layer, _ = make_layer("linear2d")
    with pytest.raises(perforate.PhaseError, match="dendrite phase"):
        layer.install(torch.zeros(5, dtype=torch.long))
    layer.start_dendrite_phase(candidates=2, generator=gen)
    with pytest.raises(perforate.InstallError, match=r"shape \(5,\)"):
        layer.install(torch.zeros(4, dtype=torch.long))
    with pytest.raises(perforate.InstallError, match="integer"):
        layer.install(torch.zeros(5))
    with pytest.raises(perforate.InstallError, match=r"\[-1, 1\]"):
        layer.install(torch.full((5,), 2))
    assert layer.install(torch.full((5,), -1)) == 0
    assert layer.slots == 0


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [("linear2d", (7, 5)), ("conv2d", (3, 6, 5)), ("conv2d", (2, 4, 6, 5)), ("conv1d", (2, 3))],
)
def test_wrong_input_shape_raises(name, bad_shape):
    layer, _ = make_layer(name)
    with pytest.raises(perforate.InputShapeError, match=name):
        layer(torch.randn(*bad_shape, dtype=torch.float64))


def test_grouped_conv_is_unsupported():
    with pytest.raises(perforate.UnsupportedLayerError, match="groups=2"):
        DendriticLayer(nn.Conv2d(4, 4, 3, groups=2), KINDS["Conv2d"], DendriteConfig(), path="c")


def test_selective_slots_are_compact(gen):
    layer, _ = make_layer("linear2d")
    layer.start_dendrite_phase(generator=gen)
    layer.install(torch.tensor([0, -1, -1, -1, -1]))
    layer.start_dendrite_phase(generator=gen)
    layer.install(torch.tensor([-1, 1, -1, -1, -1]))  # neuron 1 reuses slot 0
    assert layer.slots == 1
    assert layer.dendrite_count.tolist() == [1, 1, 0, 0, 0]
    layer.start_dendrite_phase(generator=gen)
    layer.install(torch.tensor([2, -1, -1, -1, -1]))
    assert layer.slots == 2
    assert layer.slot_mask.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
