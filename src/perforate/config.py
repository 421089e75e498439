"""All settings of perforate: one frozen dataclass, validated on construction.

Why one dataclass: the reference library keeps settings in module-level singletons and
ignores unknown names with a print. Here a configuration is a value: two models with two
configurations live side by side, and a typo or an out-of-range number raises at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError

ACTIVATIONS = ("sigmoid", "tanh")
OBJECTIVES = ("covariance", "pearson")
DIRECTIONS = ("maximize", "minimize")
# Names of the training rules (rules.RULES maps each to its class).
TRAINING_RULES = ("correlation", "gd", "restart", "sparse", "closed_form", "output_error")
SWITCH_MODES = ("budget", "patience", "fixed")
# Settings that fix the structure and the function of a wrapped model.
STRUCTURAL_SETTINGS = (
    "layer_types",
    "include",
    "exclude",
    "pair_norms",
    "skip_unsupported",
    "activation",
    "cascade",
)
# The reference library's open build: GD dendrites that keep learning, not perforated.
REFERENCE_GD = MappingProxyType({"method": "gd", "perforate": False, "dendrites_learn": True})
# "Conv1D" is transformers' transposed Linear (GPT-2), matched without importing it. Not
# in the default `layer_types` (files and checkpoints written before it existed keep
# loading); `integrations.transformers.attach` adds it.
SUPPORTED_LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Conv1D")
DEFAULT_LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text (read by `DendriteConfig.describe`)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class DendriteConfig:
    """Settings for where dendrites go, what they are, and how they are trained.

    Build with keywords, or from a mapping with `DendriteConfig.from_dict` (which rejects
    unknown keys with a suggestion). `config.replace(**changes)` returns a validated copy.
    """

    # --- which layers ----------------------------------------------------------------
    layer_types: tuple[str, ...] = _f(
        DEFAULT_LAYER_TYPES,
        "Layer classes to wrap, by torch.nn name. Supported: Linear, Conv1d, Conv2d, Conv3d, "
        "and Conv1D (transformers' transposed Linear in GPT-2; added by the Hugging Face "
        "`attach` when no config is given).",
    )
    include: tuple[str, ...] = _f(
        (),
        "fnmatch patterns on qualified module names (e.g. 'encoder.*'); empty means all.",
    )
    exclude: tuple[str, ...] = _f(
        (), "fnmatch patterns on qualified module names never to wrap (applied after include)."
    )
    pair_norms: bool = _f(
        True,
        "Treat a layer followed by BatchNorm/LayerNorm/GroupNorm as one unit, so the "
        "dendrite enters after the norm (which would otherwise undo it).",
    )
    skip_unsupported: bool = _f(
        False,
        "Skip targeted layers dendrites cannot mirror (grouped convs) instead of raising.",
    )
    # --- what a dendrite is ----------------------------------------------------------
    activation: str = _f("sigmoid", "Dendrite non-linearity g: 'sigmoid' or 'tanh'.")
    candidates_per_neuron: int = _f(
        4, "Candidate pool size P per neuron in a dendrite phase (one batched op).", min=1
    )
    candidate_init_scale: float = _f(
        0.01,
        "Standard deviation of the normal init of candidate input weights "
        "(the reference library's 0.01).",
        gt=0.0,
    )
    cascade: bool = _f(
        True,
        "A new dendrite also sees the outputs of the dendrites its neuron already has.",
    )
    perforate: bool = _f(
        True,
        "Detach the dendrites' input: no error flows back through dendrites into "
        "earlier layers (the 'perforation').",
    )
    dendrites_learn: bool = _f(
        False,
        "Let installed dendrites' input and cascade weights keep training in neuron "
        "phases (the paper freezes them).",
    )
    objective: str = _f(
        "covariance",
        "Candidate objective: 'covariance' (Fahlman's |sum (V-mean V)(E-mean E)|) or "
        "'pearson' (the same, normalised by both standard deviations). Pearson is "
        "scale-free, so nothing pushes a candidate out of the sigmoid's linear range: its "
        "winners were near-linear, redundant features (docs/pb_settings.md).",
        choices=OBJECTIVES,
    )
    output_weight_init: float = _f(
        0.0,
        "Magnitude of the initial output weight v of an installed dendrite; its sign is "
        "chosen against the neuron's error. 0 keeps the network's function exactly; other "
        "values are compensated through the unit's bias by v*mean(a).",
        min=0.0,
    )
    # --- how dendrites are trained (the controller) ---------------------------------
    method: str = _f(
        "correlation",
        "'correlation': Perforated Backpropagation (candidates trained on the "
        "cascade-correlation objective, then installed). 'gd': the reference library's "
        "open build (untrained dendrites added each cycle and trained by backprop; see "
        "DendriteConfig.reference_gd). 'restart': the control, same cycle schedule and "
        "fresh optimizer, no dendrites. Candidate variants (docs/candidates.md): "
        "'sparse' (each dendrite sees dendrite_fan_in random inputs), 'closed_form' "
        "(candidates start on the ridge direction of the neuron's error), 'output_error' "
        "(candidates follow the network output's error, boosting-like).",
        choices=TRAINING_RULES,
    )
    dendrite_fan_in: int = _f(
        8,
        "method='sparse': inputs (input channels of a convolution) each dendrite sees, "
        "sampled at random per candidate.",
        min=1,
    )
    closed_form_batches: int = _f(
        20,
        "method='closed_form': batches whose input/error covariances set the candidates' "
        "start, at the beginning of each dendrite phase.",
        min=1,
    )
    direction: str = _f(
        "maximize",
        "Whether a higher ('maximize') or lower ('minimize') score is better.",
        choices=DIRECTIONS,
    )
    switch_mode: str = _f(
        "budget",
        "'budget': the first neuron phase is a plain run with early stopping, later ones "
        "end after cycle_patience evaluations without a new best, dendrite phases end "
        "when the candidates' correlation is statistically settled (judged every "
        "dendrite_check_steps steps), and the run stops when cost_budget is spent. "
        "'patience': phases end when their score stops improving (patience, "
        "dendrite_patience). 'fixed': neuron phases last fixed_neuron_epochs and dendrite "
        "phases fixed_dendrite_epochs.",
        choices=SWITCH_MODES,
    )
    patience: int = _f(
        10,
        "Neuron phase: evaluations without an improvement before the phase ends (with "
        "switch_mode='budget': the first neuron phase only).",
        min=1,
    )
    cycle_patience: int = _f(
        3,
        "switch_mode='budget': evaluations without a new best before a neuron phase after "
        "the first one ends.",
        min=1,
    )
    dendrite_check_steps: int = _f(
        50,
        "switch_mode='budget': training steps between judgements of a dendrite phase, made "
        "in ctl.end_step(); an end_epoch after at least half as many steps also judges (a "
        "loop that does not call end_step is judged at every end_epoch). 0: judge only at "
        "end_epoch.",
        min=0,
    )
    settle_z: float = _f(
        2.0,
        "switch_mode='budget': a dendrite phase installs when the mean best correlation "
        "rose since the previous judgement by at most settle_z standard errors of its "
        "estimate, (1 - r^2)/sqrt(n - 3) with n the patterns seen (or by less than "
        "dendrite_improvement_rel of it); the first judgement of a phase never installs.",
        min=0.0,
    )
    cost_budget: float = _f(
        2.0,
        "switch_mode='budget': a new cycle starts only while the training after the first "
        "neuron phase has cost less than this multiple of that phase, in plain-step units "
        "(a dendrite-phase step with P candidates counts (2 + 2P)/3, a step with k "
        "dendrites per neuron 1 + k/3); otherwise the run ends with the best accepted "
        "model. The cycle in flight finishes. 0: no budget.",
        min=0.0,
    )
    improvement_rel: float = _f(
        1e-3,
        "An evaluation improves on the best score only by more than "
        "max(improvement_rel * |best|, improvement_abs). Also decides whether a cycle "
        "beat the best score.",
        min=0.0,
    )
    improvement_abs: float = _f(0.0, "Absolute part of the improvement threshold.", min=0.0)
    dendrite_patience: int = _f(
        3, "Dendrite phase: evaluations without a correlation improvement before install.", min=1
    )
    dendrite_improvement_rel: float = _f(
        1e-2,
        "Dendrite phase: the mean best correlation per neuron improves only by more than "
        "this relative amount.",
        min=0.0,
    )
    dendrite_max_epochs: int = _f(20, "Dendrite phase: most evaluations before install.", min=1)
    fixed_neuron_epochs: int = _f(20, "Neuron phase length with switch_mode='fixed'.", min=1)
    fixed_dendrite_epochs: int = _f(5, "Dendrite phase length with switch_mode='fixed'.", min=1)
    install_threshold: float = _f(
        0.0,
        "Selective installation: a neuron gets its best candidate only when that "
        "candidate's |Pearson correlation| with the neuron's error is at least this.",
        min=0.0,
        max=1.0,
    )
    max_dendrites: int = _f(
        8, "Most dendrites per neuron; when every neuron has them, training stops.", min=1
    )
    max_cycles: int = _f(
        1000,
        "Most cycles after the first neuron phase (0: plain training with early stopping).",
        min=0,
    )
    max_retries: int = _f(
        2, "Fresh candidate rounds after a cycle that fails to beat the best score.", min=0
    )
    steps_per_evaluation: int = _f(
        0,
        "For datasets where an epoch is long: with N > 0, ctl.end_step() returns True every "
        "N training steps, and the loop then evaluates and calls end_epoch. Every patience "
        "and cap then counts these evaluations. 0: evaluate once per epoch.",
        min=0,
    )
    max_epochs: int = _f(
        10_000,
        "Most evaluations in all; the run then ends with the best accepted model.",
        min=1,
    )

    def __post_init__(self) -> None:
        # Lists from JSON or users become tuples, so the config stays hashable and frozen.
        for name in ("layer_types", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(
                    f"{name} must be a sequence of strings, got the string {value!r}; "
                    f"write {name}=({value!r},)"
                )
            try:
                value = tuple(value)
            except TypeError as exc:
                raise ConfigError(f"{name} must be a sequence of strings, got {value!r}") from exc
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must contain only strings, got {value!r}")
            object.__setattr__(self, name, value)
        self._validate()

    # --- validation ------------------------------------------------------------------
    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = f.type if isinstance(f.type, str) else f.type.__name__
            if expected == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be True or False, got {value!r}")
            if expected == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if expected == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                if value != value or value in (float("inf"), float("-inf")):
                    raise ConfigError(f"{f.name} must be finite, got {value!r}")
            if expected == "str" and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
            meta = f.metadata
            if "min" in meta and value < meta["min"]:
                raise ConfigError(f"{f.name} must be >= {meta['min']}, got {value!r}")
            if "max" in meta and value > meta["max"]:
                raise ConfigError(f"{f.name} must be <= {meta['max']}, got {value!r}")
            if "gt" in meta and not value > meta["gt"]:
                raise ConfigError(f"{f.name} must be > {meta['gt']}, got {value!r}")
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.layer_types:
            raise ConfigError(f"layer_types is empty: name at least one of {SUPPORTED_LAYER_TYPES}")
        for t in self.layer_types:
            if t not in SUPPORTED_LAYER_TYPES:
                hint = difflib.get_close_matches(t, SUPPORTED_LAYER_TYPES, n=1)
                raise ConfigError(
                    f"layer_types has unsupported type {t!r}; supported: {SUPPORTED_LAYER_TYPES}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )

    # --- construction helpers --------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DendriteConfig:
        """Build from a mapping; unknown keys raise `ConfigError` with a suggestion."""
        if not isinstance(values, Mapping):
            # A string would be read as its characters, None as nothing iterable.
            raise ConfigError(
                "DendriteConfig.from_dict needs a mapping of setting names to values, "
                f"e.g. {{'patience': 3}}; got {type(values).__name__} {_shorten(values)}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            parts = []
            for k in unknown:
                hint = difflib.get_close_matches(k, names, n=1)
                parts.append(f"{k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            raise ConfigError(
                f"unknown setting(s) {', '.join(parts)}; valid settings: {', '.join(names)}"
            )
        return cls(**values)

    @classmethod
    def reference_gd(cls, **overrides: Any) -> DendriteConfig:
        """What the reference library's open build does: GD dendrites, not perforated."""
        return cls.from_dict({**REFERENCE_GD, **overrides})

    @classmethod
    def from_json(cls, text: str) -> DendriteConfig:
        """Build from a JSON object's text (what `to_json` writes)."""
        try:
            values = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"DendriteConfig.from_json: not JSON text: {exc}") from exc
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v, tuple) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """Every setting that differs in a saved config, as "'name': mine here, theirs
        saved" lines; settings added since it was written count as their defaults."""
        theirs = {**DendriteConfig().to_dict(), **saved}
        mine = self.to_dict()
        return [
            f"{k!r}: {mine.get(k)!r} here, {theirs.get(k)!r} saved"
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        ]

    def structural_differences(self, other: DendriteConfig | Mapping[str, Any]) -> list[str]:
        """Settings that fix what a wrapped model computes and differ in `other`, as
        "name: mine here, theirs saved" lines (empty when the two agree)."""
        theirs = other.to_dict() if isinstance(other, DendriteConfig) else dict(other)
        mine = self.to_dict()
        return [
            f"{k!r}: {mine[k]!r} here, {theirs.get(k)!r} saved"
            for k in STRUCTURAL_SETTINGS
            if mine[k] != theirs.get(k)
        ]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> DendriteConfig:
        """A validated copy with `changes` applied; unknown names raise `ConfigError`."""
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict({**merged, **changes})

    @classmethod
    def markdown(cls) -> str:
        """docs/settings.md, generated from the help texts so the two never drift."""
        lines = [
            "# Settings",
            "",
            "Generated by `perforate config --markdown > docs/settings.md` "
            "from `DendriteConfig`'s help texts. Unknown names and out-of-range values "
            "raise `ConfigError`.",
            "",
            "| setting | default | meaning |",
            "|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            default = f.default if not isinstance(f.default, tuple) else list(f.default)
            lines.append(f"| `{f.name}` | `{default!r}` | {f.metadata['help']} |")
        return "\n".join(lines) + "\n"

    @classmethod
    def describe(cls) -> str:
        """One line per setting: name, default, help. Used by `perforate --help-config`."""
        lines = []
        for f in dataclasses.fields(cls):
            lines.append(f"{f.name} = {f.default!r}\n    {f.metadata['help']}")
        return "\n".join(lines)
