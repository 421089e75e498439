"""Hostile inputs, round two: docs/errors.md rows 123 onward, one test each.

Each test is named `test_eNN_...` after its row (see test_hostile.py's
`test_every_row_has_its_test`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

import perforate


class _SeqAndDirect(nn.Module):
    """A Sequential(Linear, BatchNorm) whose Linear is also called on its own."""

    def __init__(self, norm_twice: bool = False) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.out = nn.Linear(16, 3)
        self.norm_twice = norm_twice
        with torch.no_grad():
            self.seq[1].weight.fill_(5.0)
            self.seq[1].running_mean.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.seq[1](x @ torch.ones(6, 8)) if self.norm_twice else self.seq[0](x)
        return self.out(torch.cat([self.seq(x), other], 1))


def test_e123_a_sequential_layer_or_norm_also_called_elsewhere_is_not_paired(caplog):
    x = torch.randn(64, 6)
    for norm_twice in (False, True):
        model = _SeqAndDirect(norm_twice).eval()
        before = model(x)
        with caplog.at_level(logging.INFO, logger="perforate.convert"):
            perforate.add_dendrites(model)
        layer = perforate.dendritic_layers(model)["seq.0"]
        assert layer.norm is None and isinstance(model.seq[1], nn.BatchNorm1d)
        # Same modules, same order of operations, one process: bit for bit.
        assert torch.equal(model(x), before)
        assert "not pairing seq.0 with norm seq.1" in caplog.text
        caplog.clear()
    # An ordinary Sequential still pairs: the norm moves into the wrapper.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    perforate.add_dendrites(plain)
    assert isinstance(plain[0].norm, nn.BatchNorm1d) and isinstance(plain[1], nn.Identity)
