"""Finding, pairing, wrapping and unwrapping target layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, DendriticLayer


class CustomNet(nn.Module):
    """Norms used through attributes, not a Sequential: pairing needs torch.fx."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)  # residual: its output has 2 users
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        r = self.conv2(h)
        h = torch.relu(self.bn2(r) + r)
        h = h.mean((2, 3))
        return self.head(torch.relu(self.ln(self.fc(h))))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
            return self.bn(self.fc(x))
        return self.bn(self.fc(-x))


def _randomise_norms(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)


def test_custom_model_function_preserved_and_pairs_found_by_fx():
    model = CustomNet()
    _randomise_norms(model)
    x = torch.randn(4, 3, 5, 5)
    outs = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outs[mode] = model(x)
    perforate.add_dendrites(model)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert torch.equal(model(x), outs[mode]), mode
    layers = perforate.dendritic_layers(model)
    assert set(layers) == {"conv", "conv2", "fc", "head"}
    assert layers["conv"].norm_path == "bn" and isinstance(model.bn, nn.Identity)
    assert layers["fc"].norm_path == "ln"
    assert layers["conv2"].norm is None  # its output also feeds the residual
    assert isinstance(model.bn2, nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("layer", "norm", "shape"),
    [
        (nn.Linear(5, 6), nn.BatchNorm1d(6), (4, 5)),
        (nn.Linear(5, 6), nn.LayerNorm(6), (2, 3, 5)),
        (nn.Conv1d(2, 6, 3), nn.GroupNorm(3, 6), (4, 2, 7)),
        (nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), (4, 2, 5, 5)),
        (nn.Conv3d(2, 6, 2), nn.BatchNorm3d(6), (2, 2, 3, 3, 3)),
    ],
)
def test_norm_pairing_in_sequential(layer, norm, shape):
    model = nn.Sequential(layer, norm, nn.ReLU())
    x = torch.randn(*shape)
    y0 = model(x)
    perforate.add_dendrites(model)
    assert isinstance(model[0], DendriticLayer) and model[0].norm is norm
    assert isinstance(model[1], nn.Identity)
    assert torch.equal(model(x), y0)


def test_norm_of_other_width_is_not_paired():
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.LayerNorm(4, elementwise_affine=False),
        nn.Linear(4, 4),
        nn.Dropout(),
        nn.BatchNorm1d(4),
    )
    perforate.add_dendrites(model)
    assert model[0].norm_path == "1"
    assert model[2].norm is None  # Dropout sits between the layer and the norm


def test_untraceable_model_warns_and_falls_back():
    with pytest.warns(perforate.PerforateWarning, match="could not trace"):
        perforate.add_dendrites(Untraceable())
    model = perforate.add_dendrites(Untraceable(), DendriteConfig(pair_norms=False))
    assert model.fc.norm is None


def test_include_exclude_and_types():
    model = CustomNet()
    perforate.add_dendrites(model, DendriteConfig(layer_types=("Linear",), exclude=("head",)))
    assert set(perforate.dendritic_layers(model)) == {"fc"}
    model = CustomNet()
    perforate.add_dendrites(model, DendriteConfig(include=("conv*",)))
    assert set(perforate.dendritic_layers(model)) == {"conv", "conv2"}


def test_no_target_layer_error_says_what_was_searched():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 1, 1))
    with pytest.raises(perforate.NoTargetLayersError, match=r"\['Linear'\].*excluding"):
        perforate.add_dendrites(model, DendriteConfig(layer_types=("Linear",), exclude=("x",)))
    with pytest.raises(perforate.NoTargetLayersError, match="single target layer"):
        perforate.add_dendrites(nn.Linear(2, 2))


def test_converting_twice_raises():
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(perforate.AlreadyConvertedError, match="remove_dendrites"):
        perforate.add_dendrites(model)


def test_remove_dendrites_restores_original_modules_and_keys():
    model = CustomNet()
    originals = dict(model.named_modules())
    keys = list(model.state_dict())
    perforate.add_dendrites(model)
    perforate.remove_dendrites(model)
    for name, module in model.named_modules():
        assert module is originals[name], name
    assert list(model.state_dict()) == keys
    with pytest.raises(perforate.NotConvertedError):
        perforate.remove_dendrites(model)


def test_tied_module_is_wrapped_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(2, 3)
    y0 = model(x)
    perforate.add_dendrites(model)
    assert model[0] is model[2] and isinstance(model[0], DendriticLayer)
    assert len(perforate.dendritic_layers(model)) == 1
    assert torch.equal(model(x), y0)
    perforate.remove_dendrites(model)
    assert model[0] is shared and model[2] is shared


def test_grouped_conv_raises_or_is_skipped():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    with pytest.raises(perforate.UnsupportedLayerError, match="skip_unsupported"):
        perforate.add_dendrites(model)
    assert isinstance(model[0], nn.Conv2d)  # nothing was changed by the failed call
    perforate.add_dendrites(model, DendriteConfig(skip_unsupported=True))
    assert set(perforate.dendritic_layers(model)) == {"1"}


def test_two_configs_side_by_side():
    a = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 3)), DendriteConfig(activation="tanh"))
    b = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 3)), DendriteConfig())
    assert a[0].config.activation == "tanh" and b[0].config.activation == "sigmoid"
