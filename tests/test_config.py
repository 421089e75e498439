"""Settings: defaults are valid, every bad value raises ConfigError with a useful message."""

from __future__ import annotations

import dataclasses

import pytest

from perforate import ConfigError, DendriteConfig


def test_defaults_and_round_trip():
    cfg = DendriteConfig()
    assert cfg.activation == "sigmoid" and cfg.candidates_per_neuron == 4
    assert cfg.layer_types == ("Linear", "Conv1d", "Conv2d", "Conv3d")
    assert DendriteConfig.from_json(cfg.to_json()) == cfg
    changed = cfg.replace(activation="tanh", include=["enc.*"])
    assert changed.include == ("enc.*",) and changed.activation == "tanh"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.activation = "tanh"


def test_every_field_has_help():
    text = DendriteConfig.describe()
    for f in dataclasses.fields(DendriteConfig):
        assert f.name in text and f.metadata["help"]


def test_unknown_setting_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"'activaton' \(did you mean 'activation'\?\)"):
        DendriteConfig.from_dict({"activaton": "tanh"})
    with pytest.raises(ConfigError, match="unknown setting"):
        DendriteConfig().replace(not_a_setting=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"candidates_per_neuron": 0}, "candidates_per_neuron must be >= 1"),
        ({"candidates_per_neuron": 2.5}, "must be an integer"),
        ({"candidates_per_neuron": True}, "must be an integer"),
        ({"candidate_init_scale": 0.0}, "must be > 0"),
        ({"candidate_init_scale": float("nan")}, "must be finite"),
        ({"output_weight_init": float("inf")}, "must be finite"),
        ({"cascade": "yes"}, "True or False"),
        ({"activation": "relu"}, "activation must be one of"),
        ({"objective": "mse"}, "objective must be one of"),
        ({"layer_types": ("Linaer",)}, "did you mean 'Linear'"),
        ({"layer_types": ()}, "layer_types is empty"),
        ({"include": "enc.*"}, r"write include=\('enc.\*',\)"),
        ({"exclude": (1,)}, "only strings"),
    ],
)
def test_bad_values_raise(changes, message):
    with pytest.raises(ConfigError, match=message):
        DendriteConfig(**changes)


def test_unknown_keyword_in_constructor_raises():
    with pytest.raises(TypeError, match="activaton"):
        DendriteConfig(activaton="tanh")
