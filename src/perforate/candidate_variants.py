"""Candidate pools that differ from the paper's in how they start or what they learn.

Each is a `CandidatePool` subclass that a training rule (`rules.py`) builds; the layer,
the controller, selection and installation do not change. A resumed dendrite phase
rebuilds the right class from the `variant` name saved in the layer's phase state.

- `SparsePool`: each candidate sees `fan_in` inputs (input channels for convolutions)
  sampled at random per candidate; the rest of its input weights are zero and stay zero
  (dendritic networks with restricted input sampling match dense ones with far fewer
  parameters: Chavlis and Poirazi 2025).
- `ClosedFormPool` (Linear layers): the first `warmup` batches gather the layer input's
  covariance and its cross-covariance with each neuron's error; the candidates then start
  on the ridge-regression direction of that error, at P different slopes of the
  sigmoid, and the usual objective refines them.
- `OutputErrorPool`: candidates correlate with the error of the network's output (every
  output unit, Fahlman's original sum) instead of their own neuron's error: the
  boosting-like variant. The rule that builds it taps the model's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from .candidates import CandidatePool
from .correlation import _TINY, CandidateStats
from .errors import PhaseError


# --- restricted fan-in ---------------------------------------------------------------
def sample_fan_in_mask(
    rows: int, inputs: int, fan_in: int, generator: torch.Generator | None, device=None
) -> torch.Tensor:
    """(rows, inputs) bool: `fan_in` distinct inputs per row, drawn uniformly."""
    k = min(fan_in, inputs)
    order = torch.rand(rows, inputs, generator=generator).argsort(1)[:, :k]
    mask = torch.zeros(rows, inputs, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.to(device)


class SparsePool(CandidatePool):
    """Candidates that each see `fan_in` of the layer's inputs (sampled per candidate)."""

    variant = "sparse"

    def __init__(self, *args: Any, mask: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rows, inputs = self.bank.weight.shape[:2]
        if mask is None:  # a placeholder: `load_state_dict` brings the saved mask
            mask = torch.zeros(rows, inputs, dtype=torch.bool)
        if mask.shape != (rows, inputs) or mask.dtype != torch.bool:
            raise PhaseError(
                f"a sparse pool's mask must be bool of shape ({rows}, {inputs}), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(self.bank.weight.device))
        with torch.no_grad():
            self.bank.weight.mul_(self._weight_mask())

    def _weight_mask(self) -> torch.Tensor:
        w = self.bank.weight
        return self.mask.view(*self.mask.shape, *([1] * (w.dim() - 2))).to(w.dtype)

    def bank_output(self, xd: torch.Tensor) -> torch.Tensor:
        # The masked weight, not the stored one: gradients outside the mask are zero, so
        # those weights stay zero under any optimizer without decoupled noise.
        params = {"weight": self.input_weight(), "bias": self.bank.bias}
        return functional_call(self.bank, params, (xd,))

    def input_weight(self) -> torch.Tensor:
        return self.bank.weight * self._weight_mask()

    def extra_repr(self) -> str:
        fan_in = int(self.mask.sum(1).max()) if self.mask.numel() else 0
        return super().extra_repr() + f", fan_in={fan_in}"


# --- closed-form start ---------------------------------------------------------------
class ClosedFormPool(CandidatePool):
    """Candidates that start on the error's ridge-regression direction after a warm-up.

    At a stationary point of the trained weights the error is nearly uncorrelated with
    any linear function of the input; a sigmoid of the regression direction at a steep
    slope is not linear, and the P slopes (0.5 to 4 standard deviations per unit) span
    from near-linear to near-threshold features of it.
    """

    variant = "closed_form"
    needs_input = True
    RIDGE = 1e-3  # times the mean input variance: keeps the solve well posed
    SUMS = (
        "cf_n",
        "cf_batches",
        "cf_sum_x",
        "cf_sum_e",
        "cf_xx",
        "cf_xe",
        "cf_started",
        "cf_restart",
    )

    def __init__(self, *args: Any, warmup: int = 20, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.kind.spatial_dims != 0:
            raise PhaseError(
                f"the closed-form candidate start supports Linear layers, not {self.kind.name}; "
                "use method='correlation' or exclude the layer"
            )
        if self.reduce is not None:
            raise PhaseError("the closed-form candidate start does not run distributed yet")
        f, c = self.bank.weight.shape[1], self.neurons
        kw = {"dtype": torch.float64, "device": self.bank.weight.device}
        self.warmup = int(warmup)
        self.cf_n = torch.zeros((), **kw)
        self.cf_batches = 0
        self.cf_sum_x = torch.zeros(f, **kw)
        self.cf_sum_e = torch.zeros(c, **kw)
        self.cf_xx = torch.zeros(f, f, **kw)
        self.cf_xe = torch.zeros(f, c, **kw)
        self.cf_started = False
        # Statistics of the warm-up's candidates are dropped at the first batch after the
        # start (not at the start itself, so a judgement right then still has a window).
        self.cf_restart = False

    @classmethod
    def saved_options(cls, state: dict[str, Any]) -> dict[str, Any]:
        return {"warmup": int(state["stats"].get("cf_warmup", 20))}

    def share_statistics(self, reduce, world_size: int) -> None:
        if reduce is not None:
            raise PhaseError("the closed-form candidate start does not run distributed yet")
        super().share_statistics(reduce, world_size)

    def objective_gradient(self, v, grad_y, x=None):
        if self.cf_restart:
            self.stats.reset()
            self.cf_restart = False
        grad = super().objective_gradient(v, grad_y, x)
        if not self.cf_started and x is not None:
            xs = x.reshape(-1, x.shape[-1]).double()
            es = grad_y.reshape(-1, self.neurons).double()
            # A non-finite error leaves the sums as they were, decided on the device.
            finite = torch.isfinite(es).all()
            for name, batch in (
                ("cf_n", xs.shape[0]),
                ("cf_sum_x", xs.sum(0)),
                ("cf_sum_e", es.sum(0)),
                ("cf_xx", xs.T @ xs),
                ("cf_xe", xs.T @ es),
            ):
                old = getattr(self, name)
                old.copy_(torch.where(finite, old + batch, old))
            self.cf_batches += 1
            # The count is read once, when the warm-up ends (again only while every
            # batch so far was non-finite): one host synchronisation per phase.
            if self.cf_batches >= self.warmup and float(self.cf_n) > 1:
                self.start_from_regression()
                self.cf_restart = True
                return torch.zeros_like(grad)  # computed for the weights just replaced
        return grad

    def start_from_regression(self) -> None:
        """Set every candidate to the ridge direction of its neuron's error, at P slopes."""
        n = self.cf_n
        mx, me = self.cf_sum_x / n, self.cf_sum_e / n
        cxx = self.cf_xx / n - torch.outer(mx, mx)
        cxe = self.cf_xe / n - torch.outer(mx, me)
        f = cxx.shape[0]
        ridge = self.RIDGE * float(torch.diagonal(cxx).mean().clamp_min(_TINY))
        eye = torch.eye(f, dtype=cxx.dtype, device=cxx.device)
        w = torch.linalg.solve(cxx + ridge * eye, cxe)  # (F, C)
        std = torch.sqrt(torch.einsum("fc,fg,gc->c", w, cxx, w).clamp_min(_TINY))
        unit = w / std  # unit standard deviation of w.x per neuron
        p = self.size
        slopes = torch.tensor(
            [0.5 * 8 ** (i / max(p - 1, 1)) for i in range(p)], dtype=w.dtype, device=w.device
        )
        weight = slopes[:, None, None] * unit.T[None]  # (P, C, F)
        bias = -(weight @ mx)  # centred: the sigmoid's midpoint at the mean input
        bank = self.bank
        with torch.no_grad():
            bank.weight.copy_(weight.reshape(p * self.neurons, f).to(bank.weight.dtype))
            bank.bias.copy_(bias.reshape(-1).to(bank.bias.dtype))
        self.cf_started = True

    def statistics_state_dict(self) -> dict[str, Any]:
        state = super().statistics_state_dict()
        for name in self.SUMS:
            value = getattr(self, name)
            state[name] = value.clone() if isinstance(value, torch.Tensor) else value
        state["cf_warmup"] = self.warmup
        return state

    def load_statistics_state_dict(self, state: dict[str, Any]) -> None:
        super().load_statistics_state_dict(state)
        for name in self.SUMS:
            if name not in state:
                raise PhaseError(f"closed-form candidate state lacks {name!r}")
            own = getattr(self, name)
            if isinstance(own, torch.Tensor):
                value = torch.as_tensor(state[name], dtype=torch.float64)
                if value.shape != own.shape:
                    raise PhaseError(
                        f"closed-form sums {name}: shape {tuple(value.shape)} saved, "
                        f"{tuple(own.shape)} here"
                    )
                own.copy_(value)
            else:
                setattr(self, name, type(own)(state[name]))


# --- the network output's error ------------------------------------------------------
class OutputErrorStats(CandidateStats):
    """Statistics of P x C candidates against the O errors of the network's output.

    The same streaming sums as `CandidateStats` with the error axis O in place of each
    neuron's own: m_ve is (P, C, O). The score is Fahlman's sum over outputs of the
    absolute covariance (or correlation); `pearson()` reports, per candidate, the signed
    correlation with the output it follows most closely.
    """

    def __init__(self, candidates: int, neurons: int, outputs: int, device="cpu"):
        super().__init__(candidates, neurons, device)
        kw = {"dtype": torch.float64, "device": device}
        self.mean_e = torch.zeros(outputs, **kw)
        self.m_ve = torch.zeros(candidates, neurons, outputs, **kw)
        self.m_ee = torch.zeros(outputs, **kw)

    def fold_output_error(self, v: torch.Tensor, e: torch.Tensor):
        """Fold (N, P, C) outputs against (N, O) errors; return the centred tensors,
        batch moments and a flag (0-d bool: the batch was finite), or None for an empty
        batch. A non-finite batch leaves the sums exactly as they were and is counted in
        `skipped`, both decided on the device (no host synchronisation)."""
        n = v.shape[0]
        if n == 0:
            return None
        d = torch.float64
        vd, ed = v.to(d), e.to(d)
        ok = torch.isfinite(ed).all()
        self.skipped += ~ok
        mean_v, mean_e = vd.mean(0), ed.mean(0)
        vc, ec = vd - mean_v, ed - mean_e
        m_ve = torch.einsum("npc,no->pco", vc, ec)
        m_vv = (vc * vc).sum(0)
        m_ee = (ec * ec).sum(0)
        total = self.count + n
        dv, de = mean_v - self.mean_v, mean_e - self.mean_e
        f = self.count * n / total
        new = {
            "m_ve": self.m_ve + (m_ve + dv[..., None] * de * f),
            "m_vv": self.m_vv + (m_vv + dv * dv * f),
            "m_ee": self.m_ee + (m_ee + de * de * f),
            "mean_v": self.mean_v + dv * (n / total),
            "mean_e": self.mean_e + de * (n / total),
            "count": total,
        }
        for name, value in new.items():
            old = getattr(self, name)
            old.copy_(torch.where(ok, value, old))
        return vc, ec, m_vv, m_ee, ok

    def pearson_per_output(self) -> torch.Tensor:
        denom = torch.sqrt((self.m_vv[..., None] * self.m_ee).clamp_min(_TINY))
        return self.m_ve / denom

    def covariance(self) -> torch.Tensor:
        return self.m_ve.abs().sum(-1)

    def pearson(self) -> torch.Tensor:
        r = self.pearson_per_output()
        best = r.abs().argmax(-1, keepdim=True)
        return r.gather(-1, best).squeeze(-1)

    def score(self, objective: str) -> torch.Tensor:
        if objective == "covariance":
            return self.covariance()
        if objective == "pearson":
            return self.pearson_per_output().abs().sum(-1)
        return super().score(objective)

    def sign(self) -> torch.Tensor:
        """(P, C, O): the sign of each running covariance, +1 at 0."""
        return torch.where(self.m_ve >= 0, 1.0, -1.0)


class OutputError:
    """Holds the error of the network's output for the current backward pass."""

    def __init__(self) -> None:
        self.error: torch.Tensor | None = None


class OutputErrorTap(torch.autograd.Function):
    """Identity on the model output; its backward stores dL/d(output) in `holder`
    before any layer's candidates see their backward (the output is computed last)."""

    @staticmethod
    def forward(ctx, out, holder):  # type: ignore[override]
        ctx.holder = holder
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        ctx.holder.error = grad.detach()
        return grad, None


class OutputErrorPool(CandidatePool):
    """Candidates trained against the network output's error (all O output units)."""

    variant = "output_error"

    def __init__(self, *args: Any, outputs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source: OutputError | None = None
        self.stats = OutputErrorStats(self.size, self.neurons, outputs, self.bank.weight.device)

    @classmethod
    def saved_options(cls, state: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": int(torch.as_tensor(state["stats"]["mean_e"]).numel())}

    @classmethod
    def statistics_shapes(cls, size, neurons, stats):
        """As the paper's pool's, with the O output units in place of each neuron's error."""
        shapes = super().statistics_shapes(size, neurons, stats)
        mean_e = stats.get("mean_e")
        if isinstance(mean_e, torch.Tensor):
            errors = tuple(mean_e.shape[:1])
            shapes.update(m_ve=(size, neurons, *errors), mean_e=errors, m_ee=errors)
        return shapes

    def share_statistics(self, reduce, world_size: int) -> None:
        if reduce is not None:
            raise PhaseError("output-error candidates do not run distributed yet")
        super().share_statistics(reduce, world_size)

    def _patterns(self, v: torch.Tensor, error: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """V as (N, P, C) and the output error as (N, O) over the same patterns: a
        convolution's positions share their sample's output error."""
        p, c = self.size, self.neurons
        o = error.shape[-1]
        if self.kind.spatial_dims:
            b = v.shape[0]
            positions = v[0, 0, 0].numel()
            vn = v.reshape(b, p, c, positions).permute(0, 3, 1, 2).reshape(-1, p, c)
            en = error.reshape(b, -1, o)
            if en.shape[1] != 1:
                raise PhaseError(
                    "output-error candidates in a convolution need one output per sample"
                )
            return vn, en.expand(b, positions, o).reshape(-1, o)
        vn, en = v.reshape(-1, p, c), error.reshape(-1, o)
        if vn.shape[0] != en.shape[0]:
            raise PhaseError(
                f"output-error candidates need the layer's patterns ({vn.shape[0]}) to match "
                f"the output's ({en.shape[0]})"
            )
        return vn, en

    def objective_gradient(self, v, grad_y, x=None):
        source = self.source
        if source is None or source.error is None:
            raise PhaseError(
                "output-error candidates saw no output error: the model must return the "
                "output tensor the loss is computed from, and OutputErrorRule must be bound "
                "to the model (the Perforator does this)"
            )
        error = source.error
        if self.stats.mean_e.numel() != error.shape[-1]:
            # Sized at the first batch (shapes only: reading the count would sync).
            if self.stats.mean_e.numel() != 0:
                raise PhaseError("the model's output size changed inside a dendrite phase")
            self.stats = OutputErrorStats(
                self.size, self.neurons, error.shape[-1], self.bank.weight.device
            )
        vn, en = self._patterns(v, error)
        work = torch.promote_types(v.dtype, torch.float32)
        folded = self.stats.fold_output_error(vn.to(work), en.to(work))
        if folded is None:
            return torch.zeros_like(v)
        vc, ec, m_vv, m_ee, ok = folded
        sigma = self.stats.sign().to(ec.dtype)  # (P, C, O)
        if self.objective == "covariance":
            grad = -torch.einsum("no,pco->npc", ec, sigma)
            grad = torch.where(ok, grad, torch.zeros((), dtype=grad.dtype))  # ok: finite
        else:
            e_norm = torch.sqrt(m_ee.clamp_min(_TINY))
            s_vv = m_vv.clamp_min(_TINY)
            m_ve = torch.einsum("npc,no->pco", vc, ec)
            r = m_ve / (e_norm * torch.sqrt(s_vv)[..., None])
            en_unit = ec / e_norm
            grad = -(
                torch.einsum("no,pco->npc", en_unit, sigma) / torch.sqrt(s_vv)
                - (sigma * r).sum(-1) * vc / s_vv
            )
            # As in `surrogate_gradient`: a candidate constant over the batch (saturated)
            # has no defined correlation and gets no gradient, not E over the floor.
            floor = vn.shape[0] * torch.finfo(work).eps ** 2
            live = (m_vv > floor) & (m_ee > _TINY).any() & ok
            grad = torch.where(live, grad, torch.zeros((), dtype=grad.dtype))
        grad = grad.to(v.dtype)
        if self.kind.spatial_dims:
            b, p, c = v.shape[0], self.size, self.neurons
            positions = v[0, 0, 0].numel()
            grad = grad.reshape(b, positions, p, c).permute(0, 2, 3, 1)
        return grad.reshape(v.shape)

    def statistics_state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_statistics_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)


POOL_VARIANTS: dict[str, type[CandidatePool]] = {
    cls.variant: cls for cls in (CandidatePool, SparsePool, ClosedFormPool, OutputErrorPool)
}
