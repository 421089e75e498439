"""Streaming candidate statistics and the cascade-correlation objective.

For candidate `p` of neuron `c` over patterns `n`, with candidate output `V` and the
neuron's remaining error `E = dL/dy_c`:

    covariance  S = | sum_n (V_n - mean V)(E_n - mean E) |
    pearson     R = S / sqrt( sum_n (V_n - mean V)^2 * sum_n (E_n - mean E)^2 )

Statistics are count, means and centred co-moments in float64 (Chan's parallel update):
each batch is centred in its own precision, then merged exactly. Raw sums would be
simpler but lose the covariance, a small difference of large sums, whenever the error
has an offset large against its spread. Under DistributedDataParallel each batch's sums
are added across processes before centring, so every process folds in the global batch.

The per-batch surrogate gradient is what the user's `loss.backward()` delivers to the
candidates (see `layers._CandidateTap`): `dObjective/dV_n`, negated so that a descending
optimizer ascends the objective. Its sign `sigma` comes from the running statistics, so it
does not flip from batch to batch while a correlation is weak.

No step reads a value back to the host (on a GPU each read is a synchronisation): a batch
whose error is not finite is detected as a flag on the device, its contribution is
selected away with `torch.where` (the sums are exactly as if it had not been seen) and
its candidates get a zero gradient; the skipped-batch count is a device tensor too,
read only where the controller already reads values (its judgements, end_epoch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import OBJECTIVES

_TINY = 1e-30  # floor of squared norms: a saturated candidate gives 0, never NaN
Reduce = Callable[[torch.Tensor], None]  # in-place sum of a tensor across processes


class CandidateStats:
    """Float64 running sums for a pool of P candidates on C neurons.

    Memory is O(P*C), independent of how many patterns or batches are seen.
    """

    FIELDS = ("count", "mean_v", "mean_e", "m_ve", "m_vv", "m_ee")

    def __init__(self, candidates: int, neurons: int, device: torch.device | str = "cpu"):
        kw = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros((), **kw)
        self.mean_v = torch.zeros(candidates, neurons, **kw)
        self.mean_e = torch.zeros(neurons, **kw)
        self.m_ve = torch.zeros(candidates, neurons, **kw)  # sum (V - mean V)(E - mean E)
        self.m_vv = torch.zeros(candidates, neurons, **kw)
        self.m_ee = torch.zeros(neurons, **kw)
        # Non-finite batches skipped, on the device: adding to it never syncs.
        self.skipped = torch.zeros((), dtype=torch.long, device=device)

    @property
    def skipped_batches(self) -> int:
        """Batches skipped for a non-finite error since the last reset (reads the device
        counter: a host synchronisation on a GPU, so read it at judgements only)."""
        return int(self.skipped)

    def reset(self) -> None:
        for name in self.FIELDS:
            getattr(self, name).zero_()
        self.skipped.zero_()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The sums and the skipped-batch count, for training checkpoints."""
        state: dict[str, torch.Tensor | int] = {n: getattr(self, n).clone() for n in self.FIELDS}
        state["skipped_batches"] = self.skipped_batches
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore `state_dict()`; shapes must match this pool (P, C)."""
        for name in self.FIELDS:
            value = torch.as_tensor(state[name], dtype=torch.float64)
            target = getattr(self, name)
            if value.shape != target.shape:
                raise ValueError(
                    f"statistics {name}: shape {tuple(value.shape)} saved, "
                    f"{tuple(target.shape)} here"
                )
            target.copy_(value)
        self.skipped.fill_(int(state["skipped_batches"]))

    def add_centered(
        self,
        n: int | torch.Tensor,
        mean_v: torch.Tensor,
        mean_e: torch.Tensor,
        m_ve: torch.Tensor,
        m_vv: torch.Tensor,
        m_ee: torch.Tensor,
        ok: torch.Tensor | None = None,
    ) -> None:
        """Fold in one batch given its means and centred co-moments (Chan's update).

        `ok` (a 0-d bool tensor) keeps the batch only where True: otherwise every sum,
        count included, keeps its previous value exactly, decided on the device."""
        d = torch.float64
        n_a = self.count
        total = n_a + n
        dv = mean_v.to(d) - self.mean_v
        de = mean_e.to(d) - self.mean_e
        f = n_a * n / total
        new = {
            "m_ve": self.m_ve + (m_ve.to(d) + dv * de * f),
            "m_vv": self.m_vv + (m_vv.to(d) + dv * dv * f),
            "m_ee": self.m_ee + (m_ee.to(d) + de * de * f),
            "mean_v": self.mean_v + dv * (n / total),
            "mean_e": self.mean_e + de * (n / total),
            "count": total,
        }
        for name, value in new.items():
            old = getattr(self, name)
            old.copy_(value if ok is None else torch.where(ok, value, old))

    def fold(self, v: torch.Tensor, e: torch.Tensor, reduce: Reduce | None = None):
        """Fold in a batch and return `_center`'s result, or None for a batch empty on
        every process. A non-finite batch folds nothing (its flag, the last item, is
        False) and is counted in `skipped`; neither needs a host synchronisation."""
        batch = _center(v, e, reduce)
        if batch is None:
            return None
        n, mean_v, mean_e, m_ve, m_vv, m_ee, _, _, finite, ok = batch
        self.skipped += ~finite
        self.add_centered(n, mean_v, mean_e, m_ve, m_vv, m_ee, ok=ok)
        return batch

    # --- derived quantities (float64) -----------------------------------------------
    def covariance(self) -> torch.Tensor:
        """Signed centred cross sum `sum (V - mean V)(E - mean E)`, shape (P, C)."""
        return self.m_ve

    def pearson(self) -> torch.Tensor:
        """Signed Pearson correlation, shape (P, C); 0 where either side is constant."""
        return self.m_ve / torch.sqrt((self.m_vv * self.m_ee).clamp_min(_TINY))

    def score(self, objective: str) -> torch.Tensor:
        """The objective value |.| per (candidate, neuron), shape (P, C)."""
        if objective == "covariance":
            return self.covariance().abs()
        if objective == "pearson":
            return self.pearson().abs()
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

    def sign(self) -> torch.Tensor:
        """sigma: the sign of the running covariance, +1 where it is exactly 0."""
        return torch.where(self.covariance() >= 0, 1.0, -1.0)


def _layout(v: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple, tuple]:
    """Pattern axes of v (N, P, C, *S) and e (N, C, *S), and broadcast shapes for (P, C)
    and (C,) values: patterns are the batch and the trailing (spatial) axes."""
    s = v.dim() - 3
    p, c = v.shape[1], v.shape[2]
    return ((0, *range(3, 3 + s)), (0, *range(2, 2 + s)), (1, p, c) + (1,) * s, (1, c) + (1,) * s)


def _center(v: torch.Tensor, e: torch.Tensor, reduce: Reduce | None = None):
    """Batch count, means, centred co-moments, centred tensors and two flags.

    v is (N, P, C, *S) and e is (N, C, *S), in their natural layout (no transposes). E may
    sit on an offset large against its spread: a second pass sums the centred errors
    (small numbers, summed accurately in the working precision) and corrects the mean and
    the second moment with that residual, so no float64 copy of the batch is made.

    With `reduce` (distributed training) the means and co-moments are those of the global
    batch: local sums are added across processes, then each process centres its own
    patterns on the global means; the count is then a tensor, so nothing is read back.

    Returns `(n, mean_v, mean_e, m_ve, m_vv, m_ee, vc, ec, finite, ok)`, or None for a
    batch empty here with no process group. `finite` (0-d bool, on the device) is False
    when the global batch holds a non-finite value; `ok` also needs patterns. Where `ok`
    is False the other values are meaningless (NaN) and must be selected away.
    """
    dims_v, dims_e, shape_v, shape_e = _layout(v)
    p, c = v.shape[1], v.shape[2]
    n_local = e.numel() // c if c else 0
    if reduce is None and n_local == 0:
        return None
    s_v = v.sum(dims_v).double()
    s_e = e.sum(dims_e).double()
    n: int | torch.Tensor = n_local
    if reduce is not None:
        sums = torch.cat(
            [
                torch.tensor([float(n_local)], dtype=torch.float64, device=v.device),
                s_v.flatten(),
                s_e,
            ]
        )
        reduce(sums)
        n = sums[0]
        s_v = sums[1 : 1 + p * c].reshape(p, c)
        s_e = sums[1 + p * c :]
    finite = torch.isfinite(s_e).all() & torch.isfinite(s_v).all()
    ok = finite & (n > 0) if reduce is not None else finite
    # Centre on the means as rounded to the working precision, and keep exactly those
    # values: the residual pass below corrects relative to them.
    mean_v = (s_v / n).to(v.dtype)
    mean_e = (s_e / n).to(e.dtype)
    vc = v - mean_v.view(shape_v)
    ec = e - mean_e.view(shape_e)
    mean_v, mean_e = mean_v.double(), mean_e.double()
    m_ve = (vc * ec.unsqueeze(1)).sum(dims_v)
    m_vv = (vc * vc).sum(dims_v)
    e_sq = (ec * ec).sum(dims_e).double()
    e_res = ec.sum(dims_e).double()  # what rounding left of the mean
    if reduce is not None:
        moments = torch.cat([m_ve.double().flatten(), m_vv.double().flatten(), e_sq, e_res])
        reduce(moments)
        k = p * c
        m_ve = moments[:k].reshape(p, c).to(v.dtype)
        m_vv = moments[k : 2 * k].reshape(p, c).to(v.dtype)
        e_sq, e_res = moments[2 * k : 2 * k + c], moments[2 * k + c :]
    m_ee = (e_sq - e_res * e_res / n).clamp_min(0.0)
    mean_e = mean_e + e_res / n
    return n, mean_v, mean_e, m_ve, m_vv, m_ee, vc, ec, finite, ok


def surrogate_gradient(
    v: torch.Tensor,
    e: torch.Tensor,
    stats: CandidateStats,
    objective: str,
    reduce: Reduce | None = None,
    world_size: int = 1,
) -> torch.Tensor | None:
    """Fold a batch into `stats` and return `-dObjective/dV` for it, shape (N, P, C).

    For the covariance objective this is `-sigma (E_n - mean E)`, so by the chain rule the
    candidate weights receive `-sum sigma (E - mean E) g'(net) I`: Fahlman's gradient,
    negated for a descending optimizer. For Pearson it is the exact gradient of the batch
    correlation (scale-free in E). Both use batch means; sigma comes from the running sums.

    Returns None and folds nothing for an empty batch; a non-finite one folds nothing,
    gets a zero gradient and is counted in `stats.skipped` (decided on the device). Under
    DistributedDataParallel (`reduce` given) statistics are the global batch's on every
    process; the covariance gradient then averages across processes to exactly the
    single-process gradient (E carries the 1/world factor of the mean loss), and the
    scale-free Pearson gradient is multiplied by `world_size` to do the same.
    """
    work = torch.promote_types(v.dtype, torch.float32)
    centred = stats.fold(v.to(work), e.to(torch.promote_types(e.dtype, torch.float32)), reduce)
    if centred is None:
        return None
    n, _, _, m_ve, m_vv, m_ee, vc, ec, _, ok = centred
    _, _, shape_v, _ = _layout(vc)
    sigma = stats.sign().to(work).view(shape_v)
    ec = ec.to(work).unsqueeze(1)
    if objective == "covariance":
        grad = torch.where(ok, -sigma * ec, torch.zeros((), dtype=ec.dtype))  # ok: not skipped
    elif objective == "pearson":
        e_norm = torch.sqrt(m_ee.clamp_min(_TINY)).to(work)
        s_vv = m_vv.clamp_min(_TINY)
        r = ((m_ve / e_norm) / torch.sqrt(s_vv)).view(shape_v)
        en = ec / e_norm.view(1, 1, -1, *([1] * (vc.dim() - 3)))  # unit-norm error
        grad = -sigma * (en / torch.sqrt(s_vv).view(shape_v) - r * vc / s_vv.view(shape_v))
        # A candidate whose output does not vary over the batch beyond the working
        # precision (saturated, or constant) has no defined correlation: it scores 0 and
        # gets no gradient, instead of the error divided by the square root of the floor.
        floor = n * torch.finfo(work).eps ** 2
        live = (m_vv > floor).view(shape_v) & (m_ee > _TINY).view(1, 1, -1, *shape_v[3:])
        grad = torch.where(live & ok, grad * world_size, torch.zeros((), dtype=grad.dtype))
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return grad.to(v.dtype)
