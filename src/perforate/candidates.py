"""The candidate pool of one layer: P candidate dendrites for each of its C neurons.

Why a module of its own: candidates live only during a dendrite phase, train on a
different objective from everything else, and never change the network's output. Keeping
them apart from `DendriticLayer` means the layer only knows "add the pool's tap to my
output" and "copy the chosen candidates in"; how candidates start, what they compute and
how they learn is here.

All P*C candidates are ONE layer of the base layer's kind (row `p*C + c` is candidate `p`
of neuron `c`), plus an optional (P, k, C) cascade from the neuron's k installed
dendrites. Their gradient comes from `CandidateTap`: an identity on the layer output whose
backward hands `E = dL/dy` to the streaming statistics and returns `-dS/dV`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .correlation import CandidateStats, Reduce, surrogate_gradient
from .kinds import LayerKind


def draw_normal_(t: torch.Tensor, scale: float, generator: torch.Generator | None) -> None:
    """Fill `t` from N(0, scale) drawn with `generator` on the generator's device.

    The controller's generator is a CPU one (its state goes into checkpoints), and a CUDA
    tensor cannot draw from it: the values are drawn on its device and copied, so a model
    on a GPU gets exactly the candidates the same seed gives on a CPU."""
    if generator is None or generator.device == t.device:
        t.normal_(0.0, scale, generator=generator)
    else:
        drawn = torch.empty(t.shape, dtype=t.dtype, device=generator.device)
        t.copy_(drawn.normal_(0.0, scale, generator=generator))


# How many `no_candidate_statistics` blocks are open. Process-wide, not per thread: on a
# GPU, autograd runs the backward of a tap on its own device thread.
_paused = 0


@contextlib.contextmanager
def no_candidate_statistics() -> Iterator[None]:
    """Backward passes inside this block leave the candidates alone: no batch is folded
    into their statistics and they get no gradient.

    Why: a gradient penalty computes `torch.autograd.grad(loss, x, create_graph=True)`
    before `(loss + penalty).backward()`; both pass through every layer, so each batch
    would be folded into the candidates' statistics twice, once without the penalty.
    Wrap the `autograd.grad` call in this block so that the loss's own backward is the
    only one the candidates learn from. Outside a dendrite phase it changes nothing.

    Process-wide, not per thread: on a GPU the backward of a layer runs on autograd's own
    device thread, so a thread-local switch would not reach it. While a block is open in
    one thread, no thread's backward trains the candidates.
    """
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


class CandidateTap(torch.autograd.Function):
    """Identity on `y`; in backward, turns dL/dy into the candidates' objective gradient."""

    @staticmethod
    def forward(ctx, y, v, x, pool):  # type: ignore[override]
        ctx.pool = pool
        # The layer input only for pools that learn from it directly (closed-form start).
        ctx.save_for_backward(v.detach(), x.detach() if pool.needs_input else None)
        # A clone, not `y` itself: a returned input is a view, which in-place ops after
        # this layer (ReLU(inplace=True)) are not allowed to modify.
        return y.clone()

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        v, x = ctx.saved_tensors
        if _paused:
            return grad_y, None, None, None
        # Under create_graph=True (a gradient penalty) grad_y carries a graph: statistics
        # folded from it would hold a grad_fn that grows every step. The candidates'
        # gradient is a surrogate, not differentiated again: computed without a graph.
        with torch.no_grad():
            grad_v = ctx.pool.objective_gradient(v, grad_y.detach(), x)
        return grad_y, grad_v, None, None


class CandidatePool(nn.Module):
    """P candidates per neuron of one layer, their cascade weights and their statistics.

    Args:
        kind: the layer kind (how outputs split into (P, C) and broadcast per neuron).
        bank: a layer of `kind` with P*C outputs: the candidates' input weights and biases.
        cascade: (P, k, C) weights from the neuron's k installed dendrites, or None.
        neurons: C.
        activation: the dendrite non-linearity g.
        objective: 'covariance' or 'pearson' (see `correlation`).
    """

    #: The name `phase_state_dict` records, so a resumed dendrite phase rebuilds this class.
    variant: ClassVar[str] = "normal"
    #: Whether the objective needs the layer input in backward (saved by the tap).
    needs_input: ClassVar[bool] = False

    def __init__(
        self,
        kind: LayerKind,
        bank: nn.Module,
        cascade: torch.Tensor | None,
        neurons: int,
        activation: Callable[[torch.Tensor], torch.Tensor],
        objective: str,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.neurons = neurons
        self.size = kind.neurons(bank) // neurons
        self.bank = bank
        self.cascade = None if cascade is None else nn.Parameter(cascade)
        self._g = activation
        self.objective = objective
        self.stats = CandidateStats(self.size, neurons, device=bank.weight.device)
        # Set under DistributedDataParallel: sums statistics across processes, so every
        # process folds in the global batch and takes the same decisions.
        self.reduce: Reduce | None = None
        self.world_size = 1

    @classmethod
    def normal(
        cls,
        kind: LayerKind,
        base: nn.Module,
        size: int,
        slots: int,
        *,
        scale: float,
        cascade: bool,
        activation: Callable[[torch.Tensor], torch.Tensor],
        objective: str,
        generator: torch.Generator | None = None,
    ) -> CandidatePool:
        """Candidates with every weight drawn from N(0, scale): the paper's small start,
        which keeps a sigmoid candidate in its linear range until the objective moves it."""
        neurons = kind.neurons(base)
        bank = kind.make_bank(base, size * neurons)
        with torch.no_grad():
            draw_normal_(bank.weight, scale, generator)
            draw_normal_(bank.bias, scale, generator)
        casc = None
        if cascade and slots:
            ref = base.weight
            casc = torch.empty(size, slots, neurons, dtype=ref.dtype, device=ref.device)
            draw_normal_(casc, scale, generator)
        return cls(kind, bank, casc, neurons, activation, objective)

    @classmethod
    def placeholder(
        cls,
        kind: LayerKind,
        base: nn.Module,
        size: int,
        slots: int,
        *,
        cascade: bool,
        activation: Callable[[torch.Tensor], torch.Tensor],
        objective: str,
        state: dict[str, Any],
    ) -> CandidatePool:
        """A pool of the right shapes whose tensors `load_state_dict` then fills (resume);
        `state` is the saved `phase_state_dict()` of the layer."""
        neurons = kind.neurons(base)
        bank = kind.make_bank(base, size * neurons)
        ref = base.weight
        casc = (
            torch.zeros(size, slots, neurons, dtype=ref.dtype, device=ref.device)
            if cascade and slots
            else None
        )
        return cls(kind, bank, casc, neurons, activation, objective, **cls.saved_options(state))

    @classmethod
    def from_pool(cls, pool: CandidatePool, **options: Any) -> CandidatePool:
        """This kind of pool over another pool's bank and cascade (a variant's start from
        the paper's draw); `options` are the variant's own constructor options."""
        cascade = None if pool.cascade is None else pool.cascade.data
        return cls(
            pool.kind, pool.bank, cascade, pool.neurons, pool.activation, pool.objective,
            **options,
        )  # fmt: skip

    @property
    def activation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dendrite non-linearity g."""
        return self._g

    @classmethod
    def statistics_shapes(
        cls, size: int, neurons: int, stats: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        """The shape each saved statistic must have for a pool of `size` candidates on
        `neurons` neurons (checked before a resume touches anything)."""
        return {
            "mean_v": (size, neurons),
            "m_ve": (size, neurons),
            "m_vv": (size, neurons),
            "mean_e": (neurons,),
            "m_ee": (neurons,),
            "count": (),
        }

    @classmethod
    def saved_options(cls, state: dict[str, Any]) -> dict[str, Any]:
        """Constructor options a variant reads back from a saved phase state (`placeholder`)."""
        return {}

    def share_statistics(self, reduce: Reduce | None, world_size: int) -> None:
        """Sum statistics over a process group with `reduce` (None: this process alone)."""
        self.reduce, self.world_size = reduce, world_size

    # --- forward ----------------------------------------------------------------------
    def outputs(self, xd: torch.Tensor, installed: torch.Tensor | None) -> torch.Tensor:
        """V for the pool, (..., P, C) or (B, P, C, *S), from the (detached) layer input
        and the activations of the neuron's installed dendrites, (..., k, C) or None."""
        kind, c = self.kind, self.neurons
        net = kind.split(self.bank_output(xd), self.size, c)
        if installed is not None and self.cascade is not None:
            eq = "...ic,pic->...pc" if kind.spatial_dims == 0 else "bic...,pic->bpc..."
            net = net + torch.einsum(eq, installed.detach(), self.cascade)
        return self._g(net)

    def bank_output(self, xd: torch.Tensor) -> torch.Tensor:
        """The bank's net input for every candidate (a restricted fan-in masks it)."""
        return self.bank(xd)

    def input_weight(self) -> torch.Tensor:
        """The candidates' input weights as they act (what `install` copies)."""
        return self.bank.weight

    def tap(self, y: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`y` unchanged; the user's backward through it trains the candidates. `x` is
        the layer input (saved only when `needs_input`)."""
        return CandidateTap.apply(y, v, x, self)

    # --- objective (called from backward) ---------------------------------------------
    def objective_gradient(
        self, v: torch.Tensor, grad_y: torch.Tensor, x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fold one batch into the statistics and return -dObjective/dV for it."""
        p, c = self.size, self.neurons
        # Linear: (..., P, C) -> (N, P, C), a view. Conv: (B, P, C, *S) as it is.
        flat = self.kind.spatial_dims == 0
        vn = v.reshape(-1, p, c) if flat else v
        en = grad_y.reshape(-1, c) if flat else grad_y
        g = surrogate_gradient(
            vn, en, self.stats, self.objective, reduce=self.reduce, world_size=self.world_size
        )
        if g is None:  # an empty batch (a non-finite one gets zeros, decided on the device)
            return torch.zeros_like(v)
        return g.reshape(v.shape)

    # --- what the phase learned -------------------------------------------------------
    def best_correlation(self) -> float:
        """Mean over neurons of the best candidate's |Pearson correlation| with the error."""
        return float(self.stats.pearson().abs().max(0).values.mean())

    def output_std(self) -> torch.Tensor:
        """Standard deviation of every candidate's output over the patterns seen, (P, C)."""
        s = self.stats
        return (s.m_vv / s.count.clamp_min(1)).sqrt()

    def statistics_state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_statistics_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)

    def extra_repr(self) -> str:
        return f"size={self.size}, neurons={self.neurons}, objective={self.objective!r}"
