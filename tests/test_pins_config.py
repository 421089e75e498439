"""Every setting's default, type and bound, written out by hand (docs/settings.md's table),
and the helpers that compare, copy and describe a config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from perforate import ConfigError, DendriteConfig
from perforate.config import REFERENCE_GD

# name: (default, lowest accepted, highest accepted or None); the paper's and our choices.
NUMBERS = {
    "candidates_per_neuron": (4, 1, None),
    "candidate_init_scale": (0.01, None, None),  # > 0, see the test below
    "output_weight_init": (0.0, 0.0, None),
    "dendrite_fan_in": (8, 1, None),
    "closed_form_batches": (20, 1, None),
    "patience": (10, 1, None),
    "cycle_patience": (3, 1, None),
    "dendrite_check_steps": (50, 0, None),
    "settle_z": (2.0, 0.0, None),
    "cost_budget": (2.0, 0.0, None),
    "improvement_rel": (1e-3, 0.0, None),
    "improvement_abs": (0.0, 0.0, None),
    "dendrite_patience": (3, 1, None),
    "dendrite_improvement_rel": (1e-2, 0.0, None),
    "dendrite_max_epochs": (20, 1, None),
    "fixed_neuron_epochs": (20, 1, None),
    "fixed_dendrite_epochs": (5, 1, None),
    "install_threshold": (0.0, 0.0, 1.0),
    "max_dendrites": (8, 1, None),
    "max_cycles": (1000, 0, None),
    "max_retries": (2, 0, None),
    "steps_per_evaluation": (0, 0, None),
    "max_epochs": (10_000, 1, None),
}
FLAGS = {
    "pair_norms": True,
    "skip_unsupported": False,
    "cascade": True,
    "perforate": True,
    "dendrites_learn": False,
}
CHOICES = {
    "activation": ("sigmoid", ("sigmoid", "tanh")),
    "objective": ("covariance", ("covariance", "pearson")),
    "method": (
        "correlation",
        ("correlation", "gd", "restart", "sparse", "closed_form", "output_error"),
    ),
    "direction": ("maximize", ("maximize", "minimize")),
    "switch_mode": ("budget", ("budget", "patience", "fixed")),
}
INTS = {n for n, (d, _, _) in NUMBERS.items() if type(d) is int}
FLOATS = set(NUMBERS) - INTS


def test_defaults_by_hand():
    cfg = DendriteConfig()
    for name, (default, _, _) in NUMBERS.items():
        value = getattr(cfg, name)
        assert value == default and type(value) is type(default), name
    for name, default in FLAGS.items():
        assert getattr(cfg, name) is default, name
    for name, (default, _) in CHOICES.items():
        assert getattr(cfg, name) == default, name
    assert cfg.layer_types == ("Linear", "Conv1d", "Conv2d", "Conv3d")
    assert cfg.include == () and cfg.exclude == ()


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_each_bound_accepts_its_edge_and_refuses_beyond(name):
    _, low, high = NUMBERS[name]
    step = 1 if name in INTS else 1e-9
    if low is not None:
        assert getattr(DendriteConfig(**{name: low}), name) == low
        with pytest.raises(ConfigError, match=rf"{name} must be >= {low}, got"):
            DendriteConfig(**{name: low - step})
    if high is not None:
        assert getattr(DendriteConfig(**{name: high}), name) == high
        with pytest.raises(ConfigError, match=rf"{name} must be <= {high}, got"):
            DendriteConfig(**{name: high + step})


def test_init_scale_must_be_above_zero():
    assert DendriteConfig(candidate_init_scale=1e-12).candidate_init_scale == 1e-12
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match=r"candidate_init_scale must be > 0.0"):
            DendriteConfig(candidate_init_scale=bad)


@pytest.mark.parametrize("name", sorted(INTS))
def test_integer_settings_refuse_bools_floats_and_strings(name):
    for bad in (True, False, 2.0, "3"):
        with pytest.raises(ConfigError, match=rf"{name} must be an integer"):
            DendriteConfig(**{name: bad})


@pytest.mark.parametrize("name", sorted(FLOATS))
def test_number_settings_refuse_bools_and_non_numbers_and_take_integers(name):
    for bad in (True, False, "0.5", None, [0.5]):
        with pytest.raises(ConfigError, match=rf"{name} must be a number, got"):
            DendriteConfig(**{name: bad})
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError, match=rf"{name} must be finite"):
            DendriteConfig(**{name: bad})
    assert getattr(DendriteConfig(**{name: 1}), name) == 1  # an int is a number


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_flags_take_only_bools(name):
    for bad in (1, 0, "yes", None):
        with pytest.raises(ConfigError, match=rf"{name} must be True or False"):
            DendriteConfig(**{name: bad})
    assert getattr(DendriteConfig(**{name: not FLAGS[name]}), name) is (not FLAGS[name])


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_choices_take_each_listed_value_and_nothing_else(name):
    for value in CHOICES[name][1]:
        assert getattr(DendriteConfig(**{name: value}), name) == value
    with pytest.raises(ConfigError, match=rf"{name} must be"):
        DendriteConfig(**{name: "other"})
    with pytest.raises(ConfigError, match=rf"{name} must be a string, got 3"):
        DendriteConfig(**{name: 3})


def test_layer_types_refuse_unsupported_and_take_conv1d_of_transformers():
    assert DendriteConfig(layer_types=["Conv1D"]).layer_types == ("Conv1D",)
    with pytest.raises(ConfigError, match=r"unsupported type 'Embedding'; supported: \("):
        DendriteConfig(layer_types=("Embedding",))
    with pytest.raises(ConfigError) as info:
        DendriteConfig(layer_types=("Embedding",))
    assert "did you mean" not in str(info.value)  # no close name: no hint
    with pytest.raises(ConfigError, match=r"\(did you mean 'Conv2d'\?\)"):
        DendriteConfig(layer_types=("conv2d",))
    with pytest.raises(ConfigError, match="sequence of strings, got 3"):
        DendriteConfig(exclude=3)
    assert DendriteConfig(include=["a", "b"]).include == ("a", "b")


def test_differences_list_every_changed_setting_and_default_missing_ones():
    cfg = DendriteConfig(patience=4, activation="tanh")
    saved = DendriteConfig().to_dict()
    assert cfg.differences(saved) == [
        "'activation': 'tanh' here, 'sigmoid' saved",
        "'patience': 4 here, 10 saved",
    ]
    old = {k: v for k, v in saved.items() if k != "max_epochs"}  # written before it existed
    assert DendriteConfig().differences(old) == []
    assert DendriteConfig().differences({"future": 1}) == ["'future': None here, 1 saved"]


def test_structural_differences_only_name_structural_settings():
    cfg = DendriteConfig(cascade=False, patience=3)
    assert cfg.structural_differences(DendriteConfig()) == ["'cascade': False here, True saved"]
    assert cfg.structural_differences(cfg.to_dict()) == []
    other = DendriteConfig(exclude=("x",)).to_dict()
    assert DendriteConfig().structural_differences(other) == ["'exclude': [] here, ['x'] saved"]


def test_to_dict_json_and_replace():
    cfg = DendriteConfig(include=("a",))
    d = cfg.to_dict()
    assert (
        d["include"] == ["a"]
        and d["patience"] == 10
        and len(d) == len(dataclasses.fields(DendriteConfig))
    )
    assert json.loads(cfg.to_json()) == d
    assert list(json.loads(cfg.to_json())) == sorted(d)
    assert cfg.replace(patience=2).patience == 2 and cfg.replace(patience=2).include == ("a",)
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        cfg.replace(patience=0)
    gd = DendriteConfig.reference_gd(patience=5)
    assert (gd.method, gd.perforate, gd.dendrites_learn, gd.patience) == ("gd", False, True, 5)
    assert dict(REFERENCE_GD) == {"method": "gd", "perforate": False, "dendrites_learn": True}


def test_unknown_settings_are_all_named_with_hints():
    with pytest.raises(ConfigError, match=r"'patiense' \(did you mean 'patience'\?\), 'zzz';"):
        DendriteConfig.from_dict({"patiense": 1, "zzz": 2})


def test_markdown_and_describe_by_hand():
    md = DendriteConfig.markdown().splitlines()
    assert md[0] == "# Settings" and md[1] == "" and md[3] == ""
    assert md[4:6] == ["| setting | default | meaning |", "|---|---|---|"]
    assert len(md) == 6 + len(dataclasses.fields(DendriteConfig))
    assert (
        "| `candidates_per_neuron` | `4` | Candidate pool size P per neuron in a dendrite "
        "phase (one batched op). |"
    ) in md
    assert "| `layer_types` | `['Linear', 'Conv1d', 'Conv2d', 'Conv3d']` |" in md[6]
    text = DendriteConfig.describe()
    assert text.startswith("layer_types = ('Linear', 'Conv1d', 'Conv2d', 'Conv3d')\n    ")
    assert "\npatience = 10\n    " in text


def test_from_json_refuses_what_is_not_json():
    with pytest.raises(ConfigError, match="from_json: not JSON text"):
        DendriteConfig.from_json("patience = 3")
    with pytest.raises(ConfigError, match="from_json: not JSON text"):
        DendriteConfig.from_json(None)
    assert DendriteConfig.from_json('{"patience": 3}').patience == 3


def test_a_mapping_that_is_not_one_is_shown_shortened():
    with pytest.raises(ConfigError) as info:
        DendriteConfig.from_dict(list(range(100)))
    text = str(info.value)
    shown = repr(list(range(100)))[:57] + "..."
    assert text.endswith(f"got list {shown}")
    with pytest.raises(ConfigError) as info:
        DendriteConfig.from_dict([1, 2])
    assert str(info.value).endswith("got list [1, 2]")  # short enough: whole


def test_shown_values_keep_60_characters_and_shorten_61():
    at_limit = ["x" * 56]  # repr: 60 characters
    over = ["x" * 57]  # repr: 61 characters
    assert len(repr(at_limit)) == 60 and len(repr(over)) == 61
    with pytest.raises(ConfigError) as info:
        DendriteConfig.from_dict(at_limit)
    assert str(info.value).endswith(f"got list {at_limit!r}")
    with pytest.raises(ConfigError) as info:
        DendriteConfig.from_dict(over)
    assert str(info.value).endswith(f"got list {repr(over)[:57]}...")
