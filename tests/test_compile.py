"""torch.compile (fullgraph, no recompiles) in the neuron phase and inference; bf16."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn

import perforate


def grown(model):
    perforate.add_dendrites(model)
    for layer in perforate.dendritic_layers(model).values():
        for pick in (0, 1):
            layer.start_dendrite_phase(candidates=2)
            choice = torch.full((layer.neurons,), pick)
            choice[-1] = -1  # selective: masks in the graph too
            layer.install(choice)
    return model


MODELS = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
        (6, 12),
    ),
    "cnn": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(4 * 36, 3),
        ),
        (4, 2, 6, 6),
    ),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(MODELS))
def test_neuron_phase_training_compiles_fullgraph_without_recompiling(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = grown(build())
    eager = grown(build())
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    for _ in range(4):  # new data each step: a recompile would raise
        x = torch.randn(*shape)
        for net, o in ((compiled, opt), (eager, opt_e)):
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
    for (k, a), b in zip(model.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", list(MODELS))
def test_inference_compiles_fullgraph(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = grown(build()).eval()
    for layer in perforate.dendritic_layers(model).values():
        layer.start_inference()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(*shape)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_keeps_statistics_in_float64():
    torch.manual_seed(0)
    model = grown(MODELS["mlp"][0]())
    layer = model[0]
    layer.start_dendrite_phase(candidates=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(32, 12))
        assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert layer.stats.m_ve.dtype == torch.float64 and int(layer.stats.count) == 32
    assert torch.isfinite(layer.stats.pearson()).all()
    assert layer.candidates.bank.weight.grad.dtype == torch.float32
    assert layer.candidates.bank.weight.grad.abs().sum() > 0
