"""Parameter accounting: what the forward pass uses, per layer and in total."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .convert import dendritic_layers
from .layers import DendriticLayer


@dataclass(frozen=True)
class LayerParameters:
    name: str
    kind: str
    neurons: int
    base: int  # the layer (and its paired norm)
    dendrite: int  # installed dendrites: input weights, bias, cascade and output weights
    dendrites: int  # installed dendrites, all neurons
    max_per_neuron: int


@dataclass(frozen=True)
class ParameterReport:
    """Counts of the parameters the forward pass uses.

    `base` is every parameter of the model outside dendrites (wrapped layers, their norms
    and all other modules); `dendrite` counts only installed dendrites that are present,
    so unused slots of a selectively grown layer do not inflate it. Candidates (which
    exist only during a dendrite phase) are never counted. A parameter shared by several
    modules (tied weights) counts once, in the first layer that holds it.
    """

    layers: tuple[LayerParameters, ...]
    base: int
    dendrite: int
    other: int = field(default=0)

    @property
    def total(self) -> int:
        return self.base + self.dendrite

    def __str__(self) -> str:
        head = f"{'layer':<28}{'kind':<8}{'neurons':>8}{'dendrites':>10}"
        rows = [head + f"{'base':>11}{'dendrite':>10}"]
        for r in self.layers:
            rows.append(
                f"{r.name:<28}{r.kind:<8}{r.neurons:>8}{r.dendrites:>10}{r.base:>11}{r.dendrite:>10}"
            )
        rows.append(f"{'other modules':<54}{self.other:>11}{0:>10}")
        rows.append(f"{'total':<54}{self.base:>11}{self.dendrite:>10}")
        rows.append(f"all parameters used by the forward pass: {self.total:,}")
        return "\n".join(rows)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Base and dendrite parameters per wrapped layer and in total."""
    layers = dendritic_layers(model)
    rows = []
    seen: set[int] = set()
    for name, layer in layers.items():
        _, dend = layer.parameter_counts()
        # Each Parameter once, by identity: a weight tied across layers (`b.weight =
        # a.weight`) counts in the first layer that uses it.
        unit = 0
        for _, q in layer._unit_parameters():
            if id(q) not in seen:
                seen.add(id(q))
                unit += q.numel()
        counts = layer.dendrite_count
        rows.append(
            LayerParameters(
                name=name,
                kind=layer.kind.name,
                neurons=layer.neurons,
                base=unit,
                dendrite=dend,
                dendrites=int(counts.sum()),
                max_per_neuron=int(counts.max()) if counts.numel() else 0,
            )
        )
        for p in layer.parameters():
            seen.add(id(p))
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    base = sum(r.base for r in rows) + other
    return ParameterReport(
        tuple(rows), base=base, dendrite=sum(r.dendrite for r in rows), other=other
    )


def step_cost(layers: dict[str, DendriticLayer], dendrite_phase: bool, candidates: int) -> float:
    """Estimated cost of one training step now, relative to a plain step (FLOP ideal,
    as if every layer were wrapped; docs/performance.md measures the real ratios).

    A plain step is about 3 forward passes' worth (forward, input and weight gradients).
    A dendrite-phase step runs the frozen network's forward and input gradients (2) and
    P candidates' forward and weight gradients (2P): (2 + 2P) / 3. A neuron-phase step
    with k frozen, perforated dendrites per neuron adds their forward: 1 + k / 3.
    """
    if dendrite_phase:
        return (2.0 + 2.0 * candidates) / 3.0
    neurons = sum(layer.neurons for layer in layers.values())
    if neurons == 0:
        return 1.0
    dendrites = sum(int(layer.dendrite_count.sum()) for layer in layers.values())
    return 1.0 + dendrites / neurons / 3.0
