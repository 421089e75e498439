"""The one registry of arms: what each run of a study trains, and which runs share a start.

An arm is a small object: a name, what it is for, the `DendriteConfig` settings it lays
over the study's `[dendrites]` section, the model width it trains (None: the factory's own)
and whether it grows dendrites. Arms whose settings agree on everything that governs the
first neuron phase (and that train the same model) share that phase: the engine runs it
once per seed and forks the others from its checkpoint (`prefix_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from perforate import ConfigError, DendriteConfig
from perforate.config import REFERENCE_GD

# Settings that change nothing before the first neuron phase ends: arms differing only in
# these share that phase. (Everything else — where layers are wrapped, the stopping rule of
# the first phase, the epoch cap, the direction — must agree.) A test runs every forkable
# arm both ways and compares bit for bit.
AFTER_FIRST_PHASE = frozenset(
    {
        "method",
        "activation",
        "candidates_per_neuron",
        "candidate_init_scale",
        "cascade",
        "perforate",
        "dendrites_learn",
        "objective",
        "output_weight_init",
        "dendrite_fan_in",
        "closed_form_batches",
        "cycle_patience",
        "dendrite_check_steps",
        "settle_z",
        "cost_budget",
        "dendrite_patience",
        "dendrite_improvement_rel",
        "dendrite_max_epochs",
        "fixed_dendrite_epochs",
        "install_threshold",
        "max_dendrites",
        "max_cycles",
        "max_retries",
    }
)

PLAIN = MappingProxyType({"method": "restart", "max_cycles": 0})


@dataclass(frozen=True)
class Arm:
    """One way of training the task's model (see the module docstring)."""

    name: str
    help: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    width: int | None = None
    grows: bool = False
    # How the model is prepared (experiments.adapt): "default" trains it from scratch, or
    # with [model] checkpoint freezes all but [model] trainable; "finetune"; "lora".
    adapt: str = "default"
    # The arm whose parameter count this one matches seed by seed: its width is found
    # once that arm's run of the seed is recorded (the engine runs it after, in one chain).
    matches: str | None = None

    def __post_init__(self) -> None:
        # A plain dict: arms travel to worker processes (a mappingproxy does not pickle).
        object.__setattr__(self, "overrides", dict(self.overrides))

    def config(self, base: Mapping[str, Any]) -> DendriteConfig:
        """The study's `[dendrites]` settings with this arm's laid over them."""
        try:
            return DendriteConfig.from_dict({**base, **self.overrides})
        except ConfigError as exc:
            raise ConfigError(f"arm {self.name!r}: {exc}") from exc

    def prefix_key(self, base: Mapping[str, Any]) -> str:
        """Equal for arms that share the first neuron phase (same model, same rules)."""
        settings = {
            k: v for k, v in self.config(base).to_dict().items() if k not in AFTER_FIRST_PHASE
        }
        shape = {"width": self.width, "adapt": self.adapt, "settings": settings}
        if self.matches is not None:  # a width of its own: never shares another's start
            shape["matches"] = self.matches
        text = json.dumps(shape, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def ends_first(self) -> bool:
        """Ends when its first neuron phase ends (a chain runs it first)."""
        return self.overrides.get("max_cycles") == 0

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "help": self.help,
            "overrides": dict(self.overrides),
            "width": self.width,
            "grows": self.grows,
            "adapt": self.adapt,
        }
        if self.matches is not None:
            out["matches"] = self.matches
        return out


REGISTRY: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("plain", "the model as given, trained once with early stopping", PLAIN),
        Arm(
            "restart",
            "the restart control: PB's cycle schedule and fresh optimizers, no dendrites",
            {"method": "restart"},
        ),
        Arm(
            "pb", "Perforated Backpropagation with the study's [dendrites] settings", {}, grows=True
        ),
        Arm(
            "gd",
            "GD dendrites: what the reference library's open build does (not perforated)",
            REFERENCE_GD,
            grows=True,
        ),
        Arm(
            "wider",
            "the plain model at the width whose parameter count is nearest each seed's PB "
            "model: a wider layer at equal parameters, run beside PB",
            PLAIN,
            matches="pb",
        ),
        Arm("head", "a trained model's trunk frozen, [model] trainable trains", PLAIN),
        Arm("finetune", "a trained model, every weight trains", PLAIN, adapt="finetune"),
        Arm(
            "lora",
            "a trained model's trunk frozen with LoRA adapters (peft) at the rank of one "
            "dendrite per neuron; [model] trainable trains",
            PLAIN,
            adapt="lora",
        ),
        Arm(
            "pb_patient",
            "PB on the paper's patient schedule (phases end by patience, not by budget)",
            {"switch_mode": "patience"},
            grows=True,
        ),
        Arm(
            "restart_patient",
            "the restart control of pb_patient: its schedule, no dendrites",
            {"method": "restart", "switch_mode": "patience"},
        ),
        Arm(
            "pb_learn",
            "PB whose installed dendrites keep learning (still perforated)",
            {"dendrites_learn": True},
            grows=True,
        ),
        Arm(
            "pb_selective",
            "PB installing only where the best candidate's |r| >= 0.1",
            {"install_threshold": 0.1},
            grows=True,
        ),
        Arm(
            "pb_sparse",
            "PB, each dendrite sees dendrite_fan_in inputs",
            {"method": "sparse"},
            grows=True,
        ),
        Arm(
            "pb_closed_form",
            "PB, candidates start on the ridge direction of the neuron's error",
            {"method": "closed_form"},
            grows=True,
        ),
        Arm(
            "pb_output_error",
            "PB, candidates follow the network output's error",
            {"method": "output_error"},
            grows=True,
        ),
    )
}

DEFAULT_ARMS = ("plain", "restart", "pb")
TRAINED_DEFAULT_ARMS = ("head", "restart", "pb", "finetune", "lora")
NEEDS_CHECKPOINT = ("finetune", "lora")
LADDER = "ladder"


def ladder_arm(width: int) -> Arm:
    return Arm(f"ladder@{width}", f"the plain model at width {width}", PLAIN, width=width)


def default_ladder(base: int) -> list[int]:
    """Half, double and four times the factory's width (the factory's own is `plain`)."""
    return sorted({max(1, base // 2), 2 * base, 4 * base} - {base})


def resolve_arms(
    names: Sequence[str | Arm], base_width: int | None, ladder: Sequence[int] | None
) -> list[Arm]:
    """The arms a study names, `ladder` expanded into one plain arm per width; an `Arm`
    given in Python (a study's own arm, e.g. settings that follow its model) as it is."""
    arms: list[Arm] = []
    for name in names:
        if isinstance(name, Arm):
            arms.append(name)
        elif name == LADDER:
            if base_width is None:
                raise ConfigError(
                    "arm 'ladder' needs the factory's width argument: set [model] width = "
                    '"<argument name>" (e.g. "hidden")'
                )
            widths = list(ladder) if ladder else default_ladder(base_width)
            arms += [ladder_arm(w) for w in widths if w != base_width]
        elif name in REGISTRY:
            arms.append(REGISTRY[name])
        else:
            raise ConfigError(f"unknown arm {name!r}; choose from {', '.join([*REGISTRY, LADDER])}")
    seen: set[str] = set()
    unique = [a for a in arms if not (a.name in seen or seen.add(a.name))]
    for arm in unique:
        if arm.matches is None:
            continue
        if base_width is None:
            raise ConfigError(
                f"arm {arm.name!r} trains the model at another width: set [model] width = "
                '"<argument name>" (e.g. "hidden")'
            )
        if arm.matches not in seen:
            raise ConfigError(
                f"arm {arm.name!r} matches the parameters of arm {arm.matches!r}, which the "
                f"study does not run: add {arm.matches!r} to [compare] arms"
            )
    return unique
