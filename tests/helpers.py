"""Shared test helpers: a slow per-neuron reference and a way to grow random dendrites."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perforate import DendriticLayer


def grow(layer: DendriticLayer, cycles: int, gen: torch.Generator, p_skip: float = 0.3) -> None:
    """Install `cycles` rounds of random candidate choices, then randomise all weights."""
    for cycle in range(cycles):
        layer.start_dendrite_phase(generator=gen)
        p = layer.pool_size
        choice = torch.randint(0, p, (layer.neurons,), generator=gen)
        skip = torch.rand(layer.neurons, generator=gen) < p_skip
        choice[skip] = -1
        choice[0] = 0  # at least one install per cycle
        if cycle == 0:
            choice[-1] = -1  # the last neuron always ends with fewer dendrites than slots
        layer.install(choice)
    with torch.no_grad():
        if layer.output_weight is not None:
            layer.output_weight.normal_(0, 1, generator=gen)
            layer.dendrites.weight.normal_(0, 0.5, generator=gen)
            layer.dendrites.bias.normal_(0, 0.5, generator=gen)
        if layer.cascade_weight is not None:
            layer.cascade_weight.normal_(0, 1, generator=gen)


def _one_neuron(layer: DendriticLayer, module, row: int, x: torch.Tensor) -> torch.Tensor:
    """Output `row` of a bank module, computed alone, in the layer's output layout."""
    w = module.weight[row : row + 1]
    b = module.bias[row : row + 1]
    if layer.kind.spatial_dims == 0:
        return F.linear(x, w, b)[..., 0]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.kind.spatial_dims]
    base = layer.base
    return conv(x, w, b, base.stride, base.padding, base.dilation)[:, 0]


def _neuron_slice(layer: DendriticLayer, y: torch.Tensor, c: int):
    return (..., c) if layer.kind.spatial_dims == 0 else (slice(None), c)


def reference_forward(layer: DendriticLayer, x: torch.Tensor):
    """Per-neuron Python loop of the equations; returns (y, installed acts, candidate V)."""
    g = torch.sigmoid if layer.config.activation == "sigmoid" else torch.tanh
    y = layer._unit(x).clone()
    c_all = layer.neurons
    acts_all, cand_all = {}, {}
    for c in range(c_all):
        idx = _neuron_slice(layer, y, c)
        acts = []
        for j in range(int(layer.dendrite_count[c])):
            net = _one_neuron(layer, layer.dendrites, j * c_all + c, x)
            if layer.cascade_weight is not None:
                for i in range(j):
                    net = net + layer.cascade_weight[j, i, c] * acts[i]
            a = g(net)
            acts.append(a)
            y[idx] = y[idx] + layer.output_weight[j, c] * a
        acts_all[c] = acts
        if layer.candidates is not None:
            for p in range(layer.pool_size):
                net = _one_neuron(layer, layer.candidates.bank, p * c_all + c, x)
                if layer.candidates.cascade is not None:
                    for i, a in enumerate(acts):
                        net = net + layer.candidates.cascade[p, i, c] * a
                cand_all[(p, c)] = g(net)
    return y, acts_all, cand_all
