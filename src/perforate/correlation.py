"""Streaming candidate statistics and the cascade-correlation objective.

For candidate `p` of neuron `c` over patterns `n`, with candidate output `V` and the
neuron's remaining error `E = dL/dy_c`:

    covariance  S = | sum_n (V_n - mean V)(E_n - mean E) |
    pearson     R = S / sqrt( sum_n (V_n - mean V)^2 * sum_n (E_n - mean E)^2 )

Statistics are count, means and centred co-moments in float64 (Chan's parallel update):
each batch is centred in its own precision, then merged exactly. Raw sums would be
simpler but lose the covariance, a small difference of large sums, whenever the error
has an offset large against its spread. The merge is associative, so per-process
statistics combine across processes with `CandidateStats.merge`.

The per-batch surrogate gradient is what the user's `loss.backward()` delivers to the
candidates (see `candidate_tap`): `dObjective/dV_n`, negated so that a descending
optimizer ascends the objective. Its sign `sigma` comes from the running statistics, so it
does not flip from batch to batch while a correlation is weak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import OBJECTIVES

_TINY = 1e-30  # floor of squared norms: a saturated candidate gives 0, never NaN


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
        self.skipped_batches = 0

    def reset(self) -> None:
        for name in self.FIELDS:
            getattr(self, name).zero_()
        self.skipped_batches = 0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The sums, for checkpoints and for summing across processes."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def add_centered(
        self,
        n: int,
        mean_v: torch.Tensor,
        mean_e: torch.Tensor,
        m_ve: torch.Tensor,
        m_vv: torch.Tensor,
        m_ee: torch.Tensor,
    ) -> None:
        """Fold in one batch given its means and centred co-moments (Chan's update)."""
        d = torch.float64
        n_a = self.count
        total = n_a + n
        dv = mean_v.to(d) - self.mean_v
        de = mean_e.to(d) - self.mean_e
        f = n_a * n / total
        self.m_ve += m_ve.to(d) + dv * de * f
        self.m_vv += m_vv.to(d) + dv * dv * f
        self.m_ee += m_ee.to(d) + de * de * f
        self.mean_v += dv * (n / total)
        self.mean_e += de * (n / total)
        self.count = total

    def merge(self, other: CandidateStats) -> None:
        """Fold in statistics gathered elsewhere (another process, another shard)."""
        if int(other.count) == 0:
            return
        self.add_centered(other.count, other.mean_v, other.mean_e, other.m_ve, other.m_vv,
                          other.m_ee)
        self.skipped_batches += other.skipped_batches

    def add(self, v: torch.Tensor, e: torch.Tensor) -> None:
        """Fold in a batch of patterns: v (N, P, C), e (N, C)."""
        try:
            batch = _center(v, e)
        except _NonFinite:
            self.skipped_batches += 1
            return
        if batch is not None:
            self.add_centered(*batch[:6])

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


Reduce = Callable[[torch.Tensor], None]  # in-place sum of a tensor across processes


class _NonFinite(Exception):
    """A batch's error holds NaN or inf (on some process)."""


def _center(v: torch.Tensor, e: torch.Tensor, reduce: Reduce | None = None):
    """Batch means, centred co-moments and the centred tensors. v (N,P,C), e (N,C).

    The error side is centred in float64: E may sit on an offset large against its
    spread, and a float32 mean would then leak rounding into the covariance. E is (N, C),
    P times smaller than V, whose values lie in a bounded range and stay in v's precision.

    With `reduce` (distributed training) the means and co-moments are those of the global
    batch: local sums are added across processes, then each process centres its own
    patterns on the global means. Returns None when the global batch is empty and raises
    `_NonFinite` when it holds a non-finite error, so every process skips the same batch.
    """
    e64 = e.double()
    n_local = v.shape[0]
    finite = bool(torch.isfinite(e64).all()) if n_local else True
    if reduce is None:
        if not finite:
            raise _NonFinite
        if n_local == 0:
            return None
        n, mean_v, mean_e = n_local, v.mean(0), e64.mean(0)
    else:
        head = torch.tensor([float(n_local), 0.0 if finite else 1.0], dtype=torch.float64,
                            device=v.device)
        sums = torch.cat([head, v.sum(0).double().flatten(), e64.sum(0)])
        reduce(sums)
        n, bad = int(sums[0]), float(sums[1])
        if bad:
            raise _NonFinite
        if n == 0:
            return None
        p_c = v.shape[1] * v.shape[2]
        mean_v = (sums[2 : 2 + p_c] / n).reshape(v.shape[1:]).to(v.dtype)
        mean_e = sums[2 + p_c :] / n
    vc = v - mean_v
    ec64 = e64 - mean_e
    ec = ec64.to(v.dtype)
    m_ve = torch.einsum("npc,nc->pc", vc, ec)
    m_vv = (vc * vc).sum(0)
    m_ee = (ec64 * ec64).sum(0)
    if reduce is not None:
        moments = torch.cat([m_ve.double().flatten(), m_vv.double().flatten(), m_ee])
        reduce(moments)
        k = m_ve.numel()
        m_ve = moments[:k].reshape(m_ve.shape).to(v.dtype)
        m_vv = moments[k : 2 * k].reshape(m_vv.shape).to(v.dtype)
        m_ee = moments[2 * k :]
    return n, mean_v, mean_e, m_ve, m_vv, m_ee, vc, ec


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

    Returns None and folds nothing for an empty batch, or for a non-finite one (counted in
    `stats.skipped_batches`). Under
    DistributedDataParallel (`reduce` given) statistics are the global batch's on every
    process; the covariance gradient then averages across processes to exactly the
    single-process gradient (E carries the 1/world factor of the mean loss), and the
    scale-free Pearson gradient is multiplied by `world_size` to do the same.
    """
    work = torch.promote_types(v.dtype, torch.float32)
    try:
        centred = _center(v.to(work), e, reduce)
    except _NonFinite:
        stats.skipped_batches += 1
        return None
    if centred is None:
        return None
    n, mean_v, mean_e, m_ve, m_vv, m_ee, vc, ec = centred
    stats.add_centered(n, mean_v, mean_e, m_ve, m_vv, m_ee)
    sigma = stats.sign().to(work)
    if objective == "covariance":
        grad = -sigma * ec.unsqueeze(1)
    elif objective == "pearson":
        m_ee = m_ee.to(work)
        e_norm = torch.sqrt(m_ee.clamp_min(_TINY))
        en = ec / e_norm  # unit-norm error: the correlation does not depend on E's scale
        s_vv = m_vv.clamp_min(_TINY)
        r = (m_ve / e_norm) / torch.sqrt(s_vv)
        grad = -sigma * (en.unsqueeze(1) / torch.sqrt(s_vv) - r * vc / s_vv) * world_size
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return grad.to(v.dtype)
