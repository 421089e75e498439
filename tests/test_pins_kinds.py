"""Layer kinds, each answer checked by hand: neurons, fan-in, banks, layouts, norm pairing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perforate import UnsupportedLayerError
from perforate.kinds import KINDS, kind_of, norm_matches


def _fake_conv1d_class(module: str) -> type[nn.Module]:
    """A class named like transformers' Conv1D (weight stored (in, out))."""

    class Conv1D(nn.Module):
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(nx, nf))
            self.bias = nn.Parameter(torch.zeros(nf))

    Conv1D.__module__ = module
    return Conv1D


def test_kind_of_matches_the_exact_class_only():
    assert kind_of(nn.Linear(2, 3)) is KINDS["Linear"]
    assert kind_of(nn.Conv2d(2, 3, 1)) is KINDS["Conv2d"]
    assert kind_of(nn.Conv3d(2, 3, 1)) is KINDS["Conv3d"]

    class MyLinear(nn.Linear):
        pass

    assert kind_of(MyLinear(2, 3)) is None
    assert kind_of(nn.ReLU()) is None
    fake = _fake_conv1d_class("transformers.pytorch_utils")(5, 7)
    assert kind_of(fake) is KINDS["Conv1D"]
    assert kind_of(_fake_conv1d_class("mylib.layers")(5, 7)) is None


def test_neurons_inputs_and_fan_in_by_hand():
    lin, conv = KINDS["Linear"], KINDS["Conv2d"]
    assert (lin.neurons(nn.Linear(4, 6)), lin.in_size(nn.Linear(4, 6))) == (6, 4)
    assert lin.fan_in(nn.Linear(4, 6)) == 4
    c = nn.Conv2d(3, 5, kernel_size=(2, 4))
    assert (conv.neurons(c), conv.in_size(c), conv.fan_in(c)) == (5, 3, 3 * 2 * 4)
    t = KINDS["Conv1D"]
    fake = _fake_conv1d_class("transformers.pytorch_utils")(nf=6, nx=4)  # 4 in, 6 out
    assert (t.neurons(fake), t.in_size(fake), t.fan_in(fake)) == (6, 4, 4)
    assert (t.neurons(nn.Linear(4, 6)), t.in_size(nn.Linear(4, 6))) == (6, 4)
    bank = t.make_bank(fake, 12)
    assert type(bank) is nn.Linear and tuple(bank.weight.shape) == (12, 4)
    assert bank.bias is not None and tuple(bank.bias.shape) == (12,)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Linear(0, 3), "0 inputs and 3 outputs"),
        (nn.Linear(3, 0), "3 inputs and 0 outputs"),
        (nn.Conv1d(4, 4, 3, groups=2), "groups=2"),
    ],
)
def test_unsupported_layers_are_refused_with_the_reason(layer, message):
    kind = kind_of(layer)
    with pytest.raises(UnsupportedLayerError, match=message):
        kind.check_supported(layer, "net.x")


def test_supported_layers_pass_the_check():
    for layer in (nn.Linear(1, 1), nn.Conv1d(1, 1, 1), nn.Conv2d(2, 3, 3, groups=1)):
        kind_of(layer).check_supported(layer, "x")  # no error


def test_a_conv_bank_mirrors_every_geometric_setting():
    c = nn.Conv2d(
        3, 4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
        padding_mode="reflect", bias=False, dtype=torch.float64,
    )  # fmt: skip
    bank = KINDS["Conv2d"].make_bank(c, 8)
    assert type(bank) is nn.Conv2d and bank.out_channels == 8 and bank.in_channels == 3
    assert bank.kernel_size == (3, 2) and bank.stride == (2, 1) and bank.padding == (1, 2)
    assert bank.dilation == (2, 1) and bank.groups == 1 and bank.padding_mode == "reflect"
    assert bank.bias is not None and bank.weight.dtype == torch.float64
    x = torch.randn(1, 3, 9, 7, dtype=torch.float64)
    assert bank(x).shape[2:] == c(x).shape[2:]
    lin = KINDS["Linear"].make_bank(nn.Linear(5, 2, bias=False), 6)
    assert tuple(lin.weight.shape) == (6, 5) and lin.bias is not None


def test_per_neuron_split_and_patterns_last_layouts():
    lin, conv = KINDS["Linear"], KINDS["Conv2d"]
    v = torch.tensor([1.0, 2.0, 3.0])
    assert lin.per_neuron(v).shape == (3,)
    assert conv.per_neuron(v).shape == (3, 1, 1)
    assert KINDS["Conv3d"].per_neuron(v).shape == (3, 1, 1, 1)
    # Linear: (B, groups * C) -> (B, groups, C); group g, neuron c is column g * C + c.
    out = torch.arange(12.0).reshape(2, 6)
    s = lin.split(out, 2, 3)
    assert s.shape == (2, 2, 3) and s[1, 1, 2].item() == 11.0 and s[0, 0, 1].item() == 1.0
    assert lin.group_axis() == -2
    # Conv: (B, groups * C, H, W) -> (B, groups, C, H, W).
    o = torch.arange(2 * 6 * 2 * 1.0).reshape(2, 6, 2, 1)
    s = conv.split(o, 3, 2)
    assert s.shape == (2, 3, 2, 2, 1) and torch.equal(s[1, 2, 1], o[1, 5])
    assert conv.group_axis() == 1
    # (B, C, H, W) -> (B*H*W, C): row b*H*W + h*W + w holds the C values at that place.
    t = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    rows = conv.patterns_last(t)
    assert rows.shape == (8, 3) and rows[5].tolist() == t[1, :, 0, 1].tolist()
    t3 = torch.arange(24.0).reshape(2, 3, 4)
    assert lin.patterns_last(t3).shape == (6, 4) and lin.patterns_last(t3)[4].tolist() == [
        16.0,
        17.0,
        18.0,
        19.0,
    ]


@pytest.mark.parametrize(
    ("kind", "layer", "norm", "pairs"),
    [
        ("Linear", nn.Linear(3, 4), nn.BatchNorm1d(4), True),
        ("Linear", nn.Linear(3, 4), nn.BatchNorm1d(3), False),
        ("Conv2d", nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), True),
        ("Conv2d", nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5), False),
        ("Conv2d", nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), True),
        ("Conv2d", nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 6), False),
        ("Linear", nn.Linear(3, 4), nn.GroupNorm(2, 4), False),  # GroupNorm mixes neurons
        ("Linear", nn.Linear(3, 4), nn.LayerNorm(4), True),
        ("Linear", nn.Linear(3, 4), nn.LayerNorm(5), False),
        ("Linear", nn.Linear(3, 4), nn.LayerNorm((2, 4)), False),
        ("Conv1d", nn.Conv1d(3, 4, 1), nn.LayerNorm((4, 9)), True),
        ("Conv1d", nn.Conv1d(3, 4, 1), nn.LayerNorm((5, 9)), False),
        ("Conv1d", nn.Conv1d(3, 4, 1), nn.LayerNorm(4), False),
        ("Conv2d", nn.Conv2d(3, 4, 1), nn.LayerNorm((4, 2, 2)), True),
        ("Linear", nn.Linear(3, 4), nn.ReLU(), False),
    ],
)
def test_norm_pairing_by_hand(kind, layer, norm, pairs):
    assert norm_matches(KINDS[kind], layer, norm) is pairs


def test_a_parametrized_layer_is_of_its_original_kind():
    from torch.nn.utils import parametrizations

    layer = parametrizations.weight_norm(nn.Linear(3, 2))
    assert type(layer) is not nn.Linear
    assert kind_of(layer) is KINDS["Linear"]
    conv = parametrizations.weight_norm(nn.Conv2d(2, 3, 1))
    assert kind_of(conv) is KINDS["Conv2d"]


def test_transformers_conv1d_lays_out_its_neurons_like_a_linear():
    kind = KINDS["Conv1D"]
    v = torch.arange(3.0)
    assert kind.per_neuron(v).shape == (3,) and kind.group_axis() == -2
    out = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(kind.split(out, 2, 3), out.reshape(2, 2, 3))
    t = torch.arange(24.0).reshape(2, 3, 4)
    assert kind.patterns_last(t).shape == (6, 4)
