"""The dendritic wrapper of one layer.

    y_c     = unit(x)_c + sum_j v_{j,c} a_{j,c}
    a_{j,c} = g( D_j(sg(x))_c + sum_{i<j} u_{j,i,c} a_{i,c} )

`unit` is the base layer, or the base layer followed by its norm. All `k` installed
dendrite slots of all `C` neurons live in ONE layer of the base's kind with `k*C` outputs
(row `j*C + c` is slot `j` of neuron `c`); `u` is one (k, k, C) tensor whose strictly lower
triangle is used; `v` is (k, C). Neuron `c` owns slots `0 .. count[c]-1`: installation is
selective, a neuron may have fewer dendrites than `k`, and an absent slot's output weight
is masked to zero, so it contributes nothing, gets no gradient, and is not counted.

In a dendrite phase the layer holds a `CandidatePool` (candidates.py): P candidates per
neuron that read the detached input and the neuron's own installed dendrites, and never
touch the network output; the layer only adds the pool's tap to its output and, at the
end, copies the chosen candidates into its slots (`install`). Which parameters train in a
neuron phase is the training rule's choice (`start_neuron_phase(dendrite_inputs_train)`).
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import nn

from .candidate_variants import POOL_VARIANTS
from .candidates import CandidatePool
from .config import DendriteConfig
from .correlation import CandidateStats, Reduce
from .errors import InputShapeError, InstallError, PhaseError
from .kinds import LayerKind


class Phase(str, enum.Enum):
    """Where a layer or a run is. Layers are in NEURON, DENDRITE or INFERENCE; the
    controller is in NEURON, DENDRITE or DONE."""

    NEURON = "neuron"
    DENDRITE = "dendrite"
    INFERENCE = "inference"
    DONE = "done"


_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}

_CANDIDATE_KEYS = (
    "candidates.bank.weight",
    "candidates.bank.bias",
    "candidates.cascade",
    "candidates.mask",
)
_SLOT_KEYS = (
    "dendrites.weight",
    "dendrites.bias",
    "output_weight",
    "cascade_weight",
    "dendrite_count",
)


def _ends_with_any(key: str, suffixes: tuple[str, ...]) -> bool:
    return any(key == s or key.endswith("." + s) for s in suffixes)


def is_candidate_key(key: str) -> bool:
    """Whether a state-dict key belongs to a dendrite phase's candidates (never saved)."""
    return _ends_with_any(key, _CANDIDATE_KEYS)


def is_sized_on_load(key: str) -> bool:
    """Whether a key's shape follows the saved structure (dendrite slots, candidates), so a
    fresh model cannot be compared against it before loading."""
    return _ends_with_any(key, _SLOT_KEYS) or is_candidate_key(key)


def _refresh_after_load(module: DendriticLayer, keys: Any) -> None:
    """`load_state_dict` post-hook: the slot mask follows the loaded dendrite counts."""
    module._refresh_mask()


class DendriticLayer(nn.Module):
    """A target layer (or layer+norm unit) with installed dendrites and a candidate pool.

    Built by `perforate.add_dendrites`; use directly only to wrap a single layer.
    """

    def __init__(
        self,
        base: nn.Module,
        kind: LayerKind,
        config: DendriteConfig,
        norm: nn.Module | None = None,
        path: str = "",
        norm_path: str | None = None,
    ) -> None:
        super().__init__()
        kind.check_supported(base, path or type(base).__name__)
        self.base = base
        self.norm = norm
        self.kind = kind
        self.config = config
        self.path = path
        self.norm_path = norm_path
        self.neurons = kind.neurons(base)
        self._g = _ACTIVATIONS[config.activation]
        self.phase = Phase.NEURON
        # Whether installed dendrites' input and cascade weights train in neuron phases:
        # the training rule's choice, passed to `start_neuron_phase`.
        self.dendrite_inputs_train = False
        self.dendrites: nn.Module | None = None
        self.register_parameter("cascade_weight", None)
        self.register_parameter("output_weight", None)
        self.register_buffer(
            "dendrite_count", torch.zeros(self.neurons, dtype=torch.long, device=base.weight.device)
        )
        self.register_buffer("slot_mask", None, persistent=False)
        self.candidates: CandidatePool | None = None
        # Set by the controller under DistributedDataParallel: sums candidate statistics
        # across processes so every process sees the global batch.
        self.reduce: Reduce | None = None
        self.world_size = 1
        # Trainability of the unit's own parameters before a dendrite phase froze them.
        self._unit_flags: dict[str, bool] = {}
        # A module-level function, not a lambda: the layer (and the model) must pickle.
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def __getattr__(self, name: str) -> Any:
        """Public attributes the wrapper lacks come from the base layer (`out_features`,
        `kernel_size`, `stride`...), so code that reads them keeps working after wrapping.

        Only reads, only public names: private and dunder names (what pickling, copying
        and torch internals probe with `hasattr`) stay the wrapper's own. Reads `_modules`
        from `__dict__` so a half-built object (during `__init__` or unpickling) raises
        AttributeError instead of recursing."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None or name.startswith("_"):
                raise
        try:
            return getattr(base, name)
        except AttributeError:
            raise AttributeError(
                f"'{type(self).__name__}' object (wrapping {type(base).__name__}) has no "
                f"attribute '{name}'"
            ) from None

    # --- structure ---------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """k: dendrite slots per neuron (the most any neuron of this layer has)."""
        return 0 if self.output_weight is None else self.output_weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, for code that reads it from outside (T5's dtype
        checks). It is not what the layer computes once dendrites are installed: fused
        paths that take it (TransformerEncoderLayer's) are turned off by `add_dendrites`."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (see `weight`)."""
        return self.base.bias

    @property
    def pool_size(self) -> int:
        """P: candidates per neuron in the dendrite phase in progress (0 outside one)."""
        return 0 if self.candidates is None else self.candidates.size

    @property
    def stats(self) -> CandidateStats | None:
        """The candidates' streaming statistics (None outside a dendrite phase)."""
        return None if self.candidates is None else self.candidates.stats

    def share_statistics(self, reduce: Reduce | None, world_size: int) -> None:
        """Sum candidate statistics over a process group with `reduce` (None: alone)."""
        self.reduce, self.world_size = reduce, world_size
        if self.candidates is not None:
            self.candidates.share_statistics(reduce, world_size)

    def _refresh_mask(self) -> None:
        k = self.slots
        if k == 0:
            self.slot_mask = None
            return
        ref = self.output_weight
        slots = torch.arange(k, device=self.dendrite_count.device)
        self.slot_mask = (slots[:, None] < self.dendrite_count[None, :]).to(ref.dtype)

    def set_slots(self, k: int) -> None:
        """Set the slot count to k, keeping the first min(k, slots) slots; new slots are
        zero. Parameters are new objects afterwards (optimizers must be rebuilt)."""
        old = self.slots
        if k == old:
            return
        self.dendrite_count.clamp_(max=k)
        if k == 0:
            self.dendrites = None
            self.output_weight = None
            self.cascade_weight = None
            self._refresh_mask()
            return
        c, m = self.neurons, min(old, k)
        ref = self.base.weight
        bank = self.kind.make_bank(self.base, k * c)
        out_w = torch.zeros(k, c, dtype=ref.dtype, device=ref.device)
        casc = torch.zeros(k, k, c, dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            bank.weight.zero_()
            bank.bias.zero_()
            if m:
                bank.weight[: m * c] = self.dendrites.weight[: m * c]
                bank.bias[: m * c] = self.dendrites.bias[: m * c]
                out_w[:m] = self.output_weight[:m]
                if self.cascade_weight is not None:
                    casc[:m, :m] = self.cascade_weight[:m, :m]
        learn = self.dendrite_inputs_train and self.phase == Phase.NEURON
        bank.requires_grad_(learn)
        self.dendrites = bank
        self.output_weight = nn.Parameter(out_w, requires_grad=self.phase == Phase.NEURON)
        if self.config.cascade:
            self.cascade_weight = nn.Parameter(casc, requires_grad=learn)
        self._refresh_mask()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Size the slots from the incoming tensors, so a model can load a state with more
        # (or fewer) dendrites with plain `load_state_dict`.
        w = state_dict.get(prefix + "output_weight")
        if w is not None and w.dim() == 2 and w.shape[1] == self.neurons:
            self.set_slots(w.shape[0])
        elif w is None and prefix + "dendrite_count" in state_dict:
            self.set_slots(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- forward -----------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        kind = self.kind
        if kind.spatial_dims == 0:
            features = kind.in_size(self.base)
            if x.dim() < 1 or x.shape[-1] != features:
                raise InputShapeError(
                    f"{self.path or 'layer'}: {kind.name} expects input (..., {features}),"
                    f" got shape {tuple(x.shape)}"
                )
            return
        d = kind.spatial_dims
        if x.dim() != d + 2 or x.shape[1] != self.base.in_channels:
            raise InputShapeError(
                f"{self.path or 'layer'}: {kind.name} expects batched input (batch, "
                f"{self.base.in_channels}, {d} spatial dims), got shape {tuple(x.shape)}; "
                "add a batch axis to an unbatched input"
            )

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.norm is None else self.norm(y)

    def _slot_activations(self, xd: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Unmasked activations of every slot: one (..., k, C) / (B, k, C, *S) tensor when
        slots are independent, else a list of per-slot tensors (the cascade is sequential).

        Absent slots compute garbage that is never used: their output weight is masked, and
        a slot only cascades into later slots of its neuron, which are absent too.
        """
        kind, k = self.kind, self.slots
        net = kind.split(self.dendrites(xd), k, self.neurons)
        if self.cascade_weight is None or k == 1:
            return self._g(net)
        ax = kind.group_axis()
        acts: list[torch.Tensor] = []
        for j in range(k):
            nj = net.select(ax, j)
            for i in range(j):
                u = kind.per_neuron(self.cascade_weight[j, i]).to(nj.dtype)
                nj = torch.addcmul(nj, acts[i], u)
            acts.append(self._g(nj))
        return acts

    def _masked(self, a: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Slot activations as one (..., k, C) / (B, k, C, *S) tensor, absent slots 0."""
        if isinstance(a, list):
            a = torch.stack(a, self.kind.group_axis())
        return a * self.kind.per_neuron(self.slot_mask).to(a.dtype)

    def installed_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Activations a of all slots, (..., k, C) or (B, k, C, *S); absent slots are 0."""
        return self._masked(self._slot_activations(x))

    def _add_dendrites(self, y: torch.Tensor, a: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """y + sum_j v_j a_j over present slots, without materialising more than needed."""
        kind = self.kind
        dtype = a[0].dtype if isinstance(a, list) else a.dtype
        v = (self.output_weight * self.slot_mask).to(dtype)  # absent slots weigh 0
        if isinstance(a, list):
            out = y.to(dtype) if y.dtype != dtype else y
            for j, aj in enumerate(a):
                # Not addcmul: a fused multiply-add would round differently from the
                # single-slot path, and installing must leave the output bit-identical.
                out = out + aj * kind.per_neuron(v[j])
            return out.to(y.dtype)
        return y + (a * kind.per_neuron(v)).sum(kind.group_axis()).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y = self._unit(x)
        k = self.slots
        pool = self.candidates if self.phase == Phase.DENDRITE else None
        if k == 0 and pool is None:
            return y
        xd = x.detach() if self.config.perforate else x
        acts = self._slot_activations(xd) if k else None
        if k:
            y = self._add_dendrites(y, acts)
        if pool is not None and torch.is_grad_enabled():
            # The same activations feed the candidates' cascade: no second bank forward.
            a = self._masked(acts).detach() if k else None
            y = pool.tap(y, pool.outputs(xd, a), xd)
        return y

    # --- phases ------------------------------------------------------------------------
    def _unit_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = [("base." + n, p) for n, p in self.base.named_parameters()]
        if self.norm is not None:
            params += [("norm." + n, p) for n, p in self.norm.named_parameters()]
        return params

    def _installed_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = []
        if self.dendrites is not None:
            out += [("dendrites." + n, p) for n, p in self.dendrites.named_parameters()]
        if self.cascade_weight is not None:
            out.append(("cascade_weight", self.cascade_weight))
        if self.output_weight is not None:
            out.append(("output_weight", self.output_weight))
        return out

    def _check_trainable(self) -> None:
        if self.phase == Phase.INFERENCE:
            raise PhaseError(f"{self.path}: layer was exported for inference; re-wrap to train")

    def draw_candidates(
        self, size: int | None = None, generator: torch.Generator | None = None
    ) -> CandidatePool:
        """A pool drawn the paper's way: every weight from N(0, candidate_init_scale)."""
        p = self.config.candidates_per_neuron if size is None else int(size)
        if p < 1:
            raise PhaseError(f"{self.path}: candidates must be >= 1, got {p}")
        cfg = self.config
        return CandidatePool.normal(
            self.kind,
            self.base,
            p,
            self.slots,
            scale=cfg.candidate_init_scale,
            cascade=cfg.cascade,
            activation=self._g,
            objective=cfg.objective,
            generator=generator,
        )

    def start_dendrite_phase(
        self,
        candidates: int | CandidatePool | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Attach a fresh candidate pool and freeze everything else in this layer.

        `candidates` is a ready `CandidatePool` (a training rule's own start), or a pool
        size P for `draw_candidates` (default: `candidates_per_neuron`).
        """
        self._check_trainable()
        pool = (
            candidates
            if isinstance(candidates, CandidatePool)
            else self.draw_candidates(candidates, generator)
        )
        if pool.neurons != self.neurons or pool.kind is not self.kind:
            raise PhaseError(f"{self.path}: the pool was built for another layer")
        if self.phase == Phase.NEURON:
            self._unit_flags = {n: q.requires_grad for n, q in self._unit_parameters()}
        for _, q in self._unit_parameters() + self._installed_parameters():
            q.requires_grad_(False)
        pool.share_statistics(self.reduce, self.world_size)
        self.candidates = pool
        self.phase = Phase.DENDRITE

    def candidate_parameters(self) -> list[nn.Parameter]:
        return [] if self.candidates is None else list(self.candidates.parameters())

    def start_neuron_phase(self, dendrite_inputs_train: bool | None = None) -> None:
        """Drop any candidates. The unit and the output weights train; the installed
        dendrites' input and cascade weights train iff `dendrite_inputs_train` (default:
        as in the last neuron phase)."""
        self._check_trainable()
        if dendrite_inputs_train is not None:
            self.dendrite_inputs_train = bool(dendrite_inputs_train)
        was_dendrite = self.phase == Phase.DENDRITE
        self.candidates = None
        if was_dendrite:  # give the unit back the trainability it had before
            for n, q in self._unit_parameters():
                q.requires_grad_(self._unit_flags.get(n, True))
        for n, q in self._installed_parameters():
            q.requires_grad_(True if n == "output_weight" else self.dendrite_inputs_train)
        self._unit_flags = {}
        self.phase = Phase.NEURON

    def start_inference(self) -> None:
        """Drop candidates and freeze every parameter: the layer only computes."""
        self.candidates = None
        for _, q in self._unit_parameters() + self._installed_parameters():
            q.requires_grad_(False)
        self.phase = Phase.INFERENCE

    # --- phase state (training checkpoints) ------------------------------------------
    def phase_state_dict(self) -> dict[str, Any]:
        """What `state_dict()` does not hold: phase, slot and pool sizes, trainability,
        candidate statistics. With `state_dict()` it restores the layer exactly."""
        pool = self.candidates
        return {
            "phase": self.phase.value,
            "slots": self.slots,
            "pool": self.pool_size,
            "dendrite_inputs_train": self.dendrite_inputs_train,
            "unit_flags": dict(self._unit_flags),
            "stats": None if pool is None else pool.statistics_state_dict(),
            "variant": "normal" if pool is None else pool.variant,
        }

    def load_phase_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `phase_state_dict()`: sizes slots and pool so that `load_state_dict`
        of the matching `state_dict()` follows; candidate weights are placeholders until then."""
        self.dendrite_inputs_train = bool(state["dendrite_inputs_train"])
        self.set_slots(int(state["slots"]))
        phase = Phase(state["phase"])
        if phase == Phase.DENDRITE:
            # States written before pool variants existed hold the paper's pool.
            pool_class = POOL_VARIANTS[state.get("variant", "normal")]
            pool = pool_class.placeholder(
                self.kind,
                self.base,
                int(state["pool"]),
                self.slots,
                cascade=self.config.cascade,
                activation=self._g,
                objective=self.config.objective,
                state=state,
            )
            self.start_dendrite_phase(pool)
            self._unit_flags = dict(state["unit_flags"])
            if state["stats"] is not None:
                pool.load_statistics_state_dict(state["stats"])
        elif phase == Phase.INFERENCE:
            self.start_inference()
        else:
            self.start_neuron_phase()

    # --- installation ------------------------------------------------------------------
    def install(
        self,
        choice: torch.Tensor,
        output_weight: float | torch.Tensor | None = None,
        activation_mean: torch.Tensor | None = None,
    ) -> int:
        """Append, per neuron, the chosen candidate as a dendrite; return how many.

        `choice` is (C,) of candidate indices, -1 where a neuron gets none. The network's
        function is unchanged: the output weight starts at 0 by default; a non-zero start
        `v0` is compensated by shifting the unit's bias by `-v0 * mean(a)` (mean from the
        candidate statistics unless `activation_mean` (P, C) is given). Ends the dendrite
        phase: the layer is in a neuron phase afterwards.
        """
        pool = self.candidates
        if self.phase != Phase.DENDRITE or pool is None:
            raise PhaseError(f"{self.path}: install needs a dendrite phase with candidates")
        c, p = self.neurons, pool.size
        choice = torch.as_tensor(choice, device=self.dendrite_count.device)
        if choice.shape != (c,) or choice.dtype not in (torch.int64, torch.int32):
            raise InstallError(
                f"{self.path}: choice must be an integer tensor of shape ({c},), "
                f"got {tuple(choice.shape)} {choice.dtype}"
            )
        if bool(((choice < -1) | (choice >= p)).any()):
            raise InstallError(f"{self.path}: choice values must be in [-1, {p - 1}]")
        choice = choice.long()
        v0 = self.config.output_weight_init if output_weight is None else output_weight
        ref = self.base.weight
        v0 = torch.as_tensor(v0, dtype=ref.dtype, device=ref.device).expand(c).clone()
        chosen = (choice >= 0).nonzero().flatten()
        if chosen.numel() == 0:
            self.start_neuron_phase()
            return 0
        picks = choice[chosen]
        if bool((v0[chosen] != 0).any()):
            mean = pool.stats.mean_v if activation_mean is None else activation_mean
            self._compensate_bias(chosen, picks, v0, mean)
        src = picks * c + chosen
        cascade = None
        if pool.cascade is not None:
            k_old = pool.cascade.shape[1]
            i = torch.arange(k_old, device=chosen.device)
            cascade = pool.cascade[picks[:, None], i[None, :], chosen[:, None]]
        self.start_neuron_phase()
        return self.append_dendrites(
            chosen, pool.input_weight()[src], pool.bank.bias[src], v0[chosen], cascade
        )

    def append_dendrites(
        self,
        neurons: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        output_weight: torch.Tensor,
        cascade: torch.Tensor | None = None,
    ) -> int:
        """Give each neuron in `neurons` (n,) one more dendrite with these input weights
        (n, *weight shape), biases (n,) and output weights (n,); `cascade` (n, k) holds
        the weights from the neuron's existing dendrites (only the first count[c] used).
        Does not compensate anything: an output weight of 0 keeps the function."""
        self._check_trainable()
        neurons = torch.as_tensor(neurons, device=self.dendrite_count.device).long()
        if neurons.numel() == 0:
            return 0
        if neurons.unique().numel() != neurons.numel():
            raise InstallError(f"{self.path}: a neuron can gain one dendrite per call")
        c = self.neurons
        j = self.dendrite_count[neurons]
        self.set_slots(max(self.slots, int(j.max()) + 1))
        with torch.no_grad():
            dst = j * c + neurons
            self.dendrites.weight[dst] = weight.to(self.dendrites.weight.dtype)
            self.dendrites.bias[dst] = bias.to(self.dendrites.bias.dtype)
            self.output_weight[j, neurons] = output_weight.to(self.output_weight.dtype)
            if cascade is not None and self.cascade_weight is not None and cascade.shape[1]:
                i = torch.arange(cascade.shape[1], device=j.device)
                keep = (i[None, :] < j[:, None]).to(cascade.dtype)
                self.cascade_weight[j[:, None], i[None, :], neurons[:, None]] = cascade * keep
        self.dendrite_count[neurons] += 1
        self._refresh_mask()
        return int(neurons.numel())

    def _compensate_bias(self, chosen, picks, v0, activation_mean) -> None:
        if activation_mean is None:
            raise InstallError(f"{self.path}: a non-zero output weight needs activation_mean")
        holder = self.norm if self.norm is not None else self.base
        bias = getattr(holder, "bias", None)
        if bias is None:
            raise InstallError(
                f"{self.path}: output_weight_init != 0 shifts the neuron by v0*mean(a), and "
                "this unit has no bias to compensate it; use output_weight_init=0"
            )
        mean = activation_mean.to(bias.dtype)[picks, chosen]
        shift = v0[chosen] * mean
        with torch.no_grad():
            view = bias.view(bias.shape[0], -1)
            view[chosen] -= shift[:, None]

    # --- accounting --------------------------------------------------------------------
    def parameter_counts(self) -> tuple[int, int]:
        """(unit, dendrite) parameters the forward pass uses (absent slots not counted)."""
        unit = sum(q.numel() for _, q in self._unit_parameters())
        counts = self.dendrite_count
        n = int(counts.sum())
        dend = 2 * n  # bias and output weight
        if n:
            # Input weights that are not zero: a restricted fan-in dendrite stores zeros
            # for the inputs it does not see (dense storage, sparse parameters).
            rows = self.slot_mask.flatten().nonzero().flatten()
            dend += int(self.dendrites.weight.detach().flatten(1)[rows].ne(0).sum())
        if self.cascade_weight is not None:
            dend += int((counts * (counts - 1) // 2).sum())  # slot j sees j earlier slots
        return unit, dend

    def extra_repr(self) -> str:
        counts = self.dendrite_count
        return (
            f"path={self.path!r}, neurons={self.neurons}, phase={self.phase.value}, "
            f"slots={self.slots}, dendrites={int(counts.sum())}, "
            f"norm={'yes' if self.norm is not None else 'no'}, pool={self.pool_size}"
        )
