"""`to_plain`: a grown model as PyTorch alone (issue 15's export)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import perforate
from helpers import grow


def grown_mlp(gen):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)
    )
    perforate.add_dendrites(model, perforate.DendriteConfig(exclude=("5",)))
    grow(perforate.dendritic_layers(model)["0"], 2, gen)  # with a cascade and its norm
    return model.eval()  # layer "3" stays without dendrites


def test_a_grown_model_becomes_pytorch_alone_and_computes_the_same(gen):
    model = grown_mlp(gen)
    x = torch.randn(4, 6, generator=gen)
    plain = perforate.to_plain(model, x)
    for batch in (x, torch.randn(9, 6, generator=gen)):  # any batch size, the same rank
        with torch.no_grad():
            assert torch.equal(plain(batch), model(batch))
    assert not perforate.dendritic_layers(plain)
    assert all(not type(m).__module__.startswith("perforate") for m in plain.modules())
    assert type(plain[3]) is nn.Linear  # no dendrites: back as it was
    assert type(plain[1]) is nn.Identity  # the norm of layer 0 is inside its graph
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    assert b"perforate" not in buffer.getvalue()  # loads where perforate is not installed
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # the user's own file, in this test
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert perforate.dendritic_layers(model)  # the original is untouched
    exported = torch.export.export(plain, (x,))
    assert torch.equal(exported.module()(x), model(x))


def test_a_grown_cnn_exports_with_free_batch_and_spatial_sizes(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    perforate.add_dendrites(model)
    grow(perforate.dendritic_layers(model)["0"], 1, gen)
    model.eval()
    plain = perforate.to_plain(model, torch.randn(2, 2, 5, 5, generator=gen))
    y = torch.randn(3, 2, 7, 6, generator=gen)
    with torch.no_grad():
        assert torch.equal(plain(y), model(y))


def test_e98_to_plain_refuses_what_it_cannot_make_plain(gen):
    with pytest.raises(perforate.NotConvertedError):
        perforate.to_plain(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2))
    model = grown_mlp(gen)
    perforate.dendritic_layers(model)["0"].start_dendrite_phase()
    with pytest.raises(perforate.PhaseError, match="dendrite phase"):
        perforate.to_plain(model, torch.randn(1, 6))
