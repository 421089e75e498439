"""Training rules: what a cycle does after a neuron phase, as small strategy objects.

The controller's state machine is the same for every rule: train the neurons until the
switching policy ends the phase, accept or retry the cycle, then ask the rule for the
next cycle. The rule answers with an `Event`:

- `DENDRITE_PHASE`: it attached candidate pools; the controller freezes the rest, trains
  them, and at the end calls `rule.install(layers)`;
- `INSTALLED`: it grew dendrites directly; a new neuron phase starts;
- `RESTARTED`: it changed nothing; a new neuron phase starts (the restart control).

A new rule (a closed-form candidate start, distillation targets, growth into a frozen
model) is one subclass here plus its name in `config.TRAINING_RULES`, or an instance
passed as `Perforator(..., rule=MyRule())`; the controller does not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from .candidate_variants import (
    ClosedFormPool,
    OutputError,
    OutputErrorPool,
    OutputErrorTap,
    SparsePool,
    sample_fan_in_mask,
)
from .candidates import CandidatePool, draw_normal_
from .config import DendriteConfig
from .errors import ConfigError, PhaseError
from .events import Event
from .layers import DendriticLayer
from .selection import BestCandidate

Layers = dict[str, DendriticLayer]


class TrainingRule(ABC):
    """What happens between two neuron phases."""

    name: ClassVar[str]
    #: Whether installed dendrites' input and cascade weights train in neuron phases.
    dendrite_inputs_train: bool = False
    #: Whether the rule adds dendrites (False: the restart control).
    grows: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def from_config(cls, config: DendriteConfig) -> TrainingRule: ...

    def bind(self, model: nn.Module, layers: Layers) -> None:
        """Called once by the controller with the wrapped model (most rules need nothing)."""
        return None

    def can_grow(self, layers: Layers) -> bool:
        """Whether another cycle can still add anything; False ends the run."""
        return True

    @abstractmethod
    def next_cycle(self, layers: Layers, generator: torch.Generator) -> Event:
        """Start the next cycle on the accepted model (see the module docstring)."""

    def install(self, layers: Layers) -> dict[str, dict[str, float]]:
        """End a dendrite phase: install into every layer (which ends the layer's dendrite
        phase) and return, per layer that gained dendrites, a summary for the history."""
        raise NotImplementedError(f"rule {self.name!r} opens no dendrite phase")


class _Growing(TrainingRule):
    """Rules that add dendrites until every neuron has `max_dendrites`."""

    def __init__(self, max_dendrites: int, dendrite_inputs_train: bool) -> None:
        self.max_dendrites = max_dendrites
        self.dendrite_inputs_train = dendrite_inputs_train

    def can_grow(self, layers: Layers) -> bool:
        cap = self.max_dendrites
        return any(int(layer.dendrite_count.min()) < cap for layer in layers.values())


class CorrelationRule(_Growing):
    """Perforated Backpropagation: per neuron a pool of candidates trained on the
    cascade-correlation objective, then the selected one installed with output weight
    `output_weight_init` (frozen inputs unless `dendrites_learn`)."""

    name = "correlation"

    def __init__(
        self,
        selector: BestCandidate | None = None,
        pool_size: int = 4,
        dendrite_inputs_train: bool = False,
    ) -> None:
        selector = selector if selector is not None else BestCandidate()
        super().__init__(selector.max_dendrites, dendrite_inputs_train)
        self.selector = selector
        self.pool_size = pool_size

    @classmethod
    def from_config(cls, config: DendriteConfig) -> CorrelationRule:
        return cls(
            BestCandidate.from_config(config), config.candidates_per_neuron, config.dendrites_learn
        )

    def make_pool(self, layer: DendriticLayer, generator: torch.Generator) -> CandidatePool:
        """The candidates one layer trains in the next dendrite phase."""
        return layer.draw_candidates(self.pool_size, generator=generator)

    def next_cycle(self, layers: Layers, generator: torch.Generator) -> Event:
        for layer in layers.values():
            layer.start_dendrite_phase(self.make_pool(layer, generator))
        return Event.DENDRITE_PHASE

    def install(self, layers: Layers) -> dict[str, dict[str, float]]:
        summaries = {}
        for name, layer in layers.items():
            pick = self.selector.select(layer)
            layer.install(
                pick.choice, output_weight=pick.output_weight, activation_mean=pick.activation_mean
            )
            if pick.count:
                summaries[name] = pick.summary
        return summaries


class SparseRule(CorrelationRule):
    """PB with restricted fan-in: each candidate (so each dendrite) sees `fan_in` inputs
    (input channels of a convolution) sampled at random per candidate. A dendrite then
    costs fan_in + 2 parameters instead of the layer's fan-in + 2."""

    name = "sparse"

    def __init__(
        self, selector: BestCandidate | None = None, pool_size: int = 4, fan_in: int = 8
    ) -> None:
        super().__init__(selector, pool_size, dendrite_inputs_train=False)
        self.fan_in = int(fan_in)

    @classmethod
    def from_config(cls, config: DendriteConfig) -> SparseRule:
        if config.dendrites_learn:
            raise ConfigError(
                "method='sparse' keeps installed dendrites' inputs frozen (training them "
                "would fill the inputs they do not see); set dendrites_learn=False"
            )
        return cls(
            BestCandidate.from_config(config), config.candidates_per_neuron, config.dendrite_fan_in
        )

    def make_pool(self, layer: DendriticLayer, generator: torch.Generator) -> CandidatePool:
        """The paper's N(0, scale) draw, then `fan_in` random inputs kept per candidate."""
        pool = layer.draw_candidates(self.pool_size, generator=generator)
        weight = pool.bank.weight
        rows, inputs = weight.shape[:2]
        mask = sample_fan_in_mask(rows, inputs, self.fan_in, generator, weight.device)
        return SparsePool.from_pool(pool, mask=mask)


class ClosedFormRule(CorrelationRule):
    """PB whose candidates start on the ridge-regression direction of their neuron's
    error, measured over the first `warmup` batches of the dendrite phase, at P slopes
    of the sigmoid; the cascade-correlation objective then refines them (Linear layers)."""

    name = "closed_form"

    def __init__(
        self,
        selector: BestCandidate | None = None,
        pool_size: int = 4,
        dendrite_inputs_train: bool = False,
        warmup: int = 20,
    ) -> None:
        super().__init__(selector, pool_size, dendrite_inputs_train)
        self.warmup = int(warmup)

    def bind(self, model: nn.Module, layers: Layers) -> None:
        """Refuse layers the closed form cannot start, before a neuron phase is spent."""
        wrong = [n for n, layer in layers.items() if layer.kind.spatial_dims != 0]
        if wrong:
            raise ConfigError(
                f"method='closed_form' supports Linear (and Conv1D) layers; {wrong} are "
                "convolutions: exclude them or use method='correlation'"
            )

    @classmethod
    def from_config(cls, config: DendriteConfig) -> ClosedFormRule:
        return cls(
            BestCandidate.from_config(config),
            config.candidates_per_neuron,
            config.dendrites_learn,
            config.closed_form_batches,
        )

    def make_pool(self, layer: DendriticLayer, generator: torch.Generator) -> CandidatePool:
        pool = layer.draw_candidates(self.pool_size, generator=generator)
        return ClosedFormPool.from_pool(pool, warmup=self.warmup)


class OutputErrorRule(CorrelationRule):
    """Boosting-like PB: candidates correlate with the error of the network's output
    (summed over output units, as in Fahlman's cascade-correlation) instead of their own
    neuron's error. Needs a model whose forward returns the tensor the loss is computed
    from; `bind` taps it."""

    name = "output_error"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source = OutputError()
        self._layers: Layers = {}
        self._hooks: list = []

    def bind(self, model: nn.Module, layers: Layers) -> None:
        for handle in self._hooks:  # bound again (a new Perforator on the same rule)
            handle.remove()
        self._layers = layers
        self._hooks = [
            model.register_forward_pre_hook(self._attach_source),
            model.register_forward_hook(self._tap_output),
        ]

    def _pools(self) -> list[OutputErrorPool]:
        return [
            layer.candidates
            for layer in self._layers.values()
            if isinstance(layer.candidates, OutputErrorPool)
        ]

    def _attach_source(self, module, args) -> None:
        # Every forward, so a pool rebuilt by a resume finds the holder too.
        for pool in self._pools():
            pool.source = self.source

    def _tap_output(self, module, args, output):
        if not self._pools() or not torch.is_grad_enabled():
            return None
        if not isinstance(output, torch.Tensor):
            raise PhaseError(
                "method='output_error' needs a model whose forward returns the output "
                f"tensor, got {type(output).__name__}"
            )
        self.source.error = None
        return OutputErrorTap.apply(output, self.source)

    def make_pool(self, layer: DendriticLayer, generator: torch.Generator) -> CandidatePool:
        pool = OutputErrorPool.from_pool(layer.draw_candidates(self.pool_size, generator))
        pool.source = self.source
        return pool


class GradientRule(_Growing):
    """GD dendrites, the reference library's open build: each cycle every neuron below
    the cap gains one dendrite with the layer kind's default initialisation and output
    weight 0; neuron phases then train it by backpropagation."""

    name = "gd"

    def __init__(
        self,
        max_dendrites: int = 8,
        dendrite_inputs_train: bool = True,
        cascade_init_scale: float = 0.01,
    ) -> None:
        super().__init__(max_dendrites, dendrite_inputs_train)
        self.cascade_init_scale = cascade_init_scale

    @classmethod
    def from_config(cls, config: DendriteConfig) -> GradientRule:
        return cls(config.max_dendrites, config.dendrites_learn, config.candidate_init_scale)

    def next_cycle(self, layers: Layers, generator: torch.Generator) -> Event:
        for layer in layers.values():
            # Default init, not the candidates' N(0, 0.01): GD dendrites must start as
            # ordinary features, since nothing but backprop will shape them.
            bank = layer.kind.make_bank(layer.base, layer.neurons)
            ref = layer.base.weight
            cascade = None
            if layer.config.cascade and layer.slots:
                cascade = torch.empty(
                    layer.slots, layer.neurons, dtype=ref.dtype, device=ref.device
                )
                draw_normal_(cascade, self.cascade_init_scale, generator)  # CPU generator
                cascade = cascade.T
            grow = (layer.dendrite_count < self.max_dendrites).nonzero().flatten()
            layer.append_dendrites(
                grow,
                bank.weight.detach()[grow],
                bank.bias.detach()[grow],
                torch.zeros(len(grow), dtype=ref.dtype, device=ref.device),
                None if cascade is None else cascade[grow],
            )
        return Event.INSTALLED


class RestartRule(TrainingRule):
    """The control: the same cycle schedule (best state restored, fresh optimizer, a new
    neuron phase), no dendrites. What PB must beat to show that dendrites did anything."""

    name = "restart"
    grows = False

    @classmethod
    def from_config(cls, config: DendriteConfig) -> RestartRule:
        return cls()

    def next_cycle(self, layers: Layers, generator: torch.Generator) -> Event:
        return Event.RESTARTED


RULES: dict[str, type[TrainingRule]] = {
    rule.name: rule
    for rule in (
        CorrelationRule,
        GradientRule,
        RestartRule,
        SparseRule,
        ClosedFormRule,
        OutputErrorRule,
    )
}


def resolve_rule(config: DendriteConfig) -> TrainingRule:
    """The rule `config.method` names: the one place that reads it. (A test keeps
    `RULES` and `config.TRAINING_RULES` in step.)"""
    return RULES[config.method].from_config(config)
