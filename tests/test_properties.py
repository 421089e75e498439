"""Property tests: random shapes, installs and phases against the reference loop."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import perforate
from helpers import reference_forward
from perforate import DendriteConfig

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def layer_and_input(draw):
    kind = draw(st.sampled_from(["Linear", "Conv1d", "Conv2d"]))
    c_in, c_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    batch = draw(st.integers(1, 3))
    if kind == "Linear":
        lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=1))
        return nn.Linear(c_in, c_out, bias=draw(st.booleans())), (batch, *lead, c_in)
    k, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad, dil = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    dims = 1 if kind == "Conv1d" else 2
    size = [draw(st.integers(dil * (k - 1) + 1, 7)) for _ in range(dims)]
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    layer = cls(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, bias=draw(st.booleans()))
    return layer, (batch, c_in, *size)


@st.composite
def grown(draw):
    base, shape = draw(layer_and_input())
    cfg = DendriteConfig(
        cascade=draw(st.booleans()),
        activation=draw(st.sampled_from(["sigmoid", "tanh"])),
        candidates_per_neuron=draw(st.integers(1, 3)),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = perforate.add_dendrites(nn.Sequential(base.double()), cfg)
    layer = model[0]
    x = torch.randn(*shape, dtype=torch.float64)
    rounds = draw(st.integers(0, 3))
    for _ in range(rounds):
        layer.start_dendrite_phase()
        y0 = layer(x).detach()
        choice = torch.tensor(
            draw(
                st.lists(
                    st.integers(-1, layer.pool_size - 1),
                    min_size=layer.neurons,
                    max_size=layer.neurons,
                )
            )
        )
        layer.install(choice)
        assert torch.equal(layer(x).detach(), y0)  # function preserved at every install
        with torch.no_grad():
            if layer.output_weight is not None:
                layer.output_weight.normal_()
            if layer.cascade_weight is not None:
                layer.cascade_weight.normal_()
    if draw(st.booleans()):
        layer.start_dendrite_phase()
    return model, x


@SETTINGS
@given(grown())
def test_batched_layer_equals_reference_loop(case):
    model, x = case
    layer = model[0]
    y_ref, _, cand_ref = reference_forward(layer, x)
    torch.testing.assert_close(layer(x), y_ref, rtol=1e-10, atol=1e-10)
    if layer.candidates is not None:
        v = layer.candidates.outputs(x, layer.installed_activations(x) if layer.slots else None)
        ax = layer.kind.group_axis()
        for (p, c), v_ref in cand_ref.items():
            got = v.select(ax, p)[..., c] if ax == -2 else v[:, p, c]
            torch.testing.assert_close(got, v_ref, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(case=grown())
def test_save_load_round_trip_is_bit_exact(case, tmp_path_factory):
    model, x = case
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    perforate.save(model, path)
    fresh = nn.Sequential(copy.deepcopy(model[0].base))
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    perforate.load(fresh, path)
    a = {k: v for k, v in model.state_dict().items() if "candidate" not in k}
    b = fresh.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
