"""Which objective, pool size, output-weight start and candidate learning rate work?

Digits, MLP 64-8-10, PB with the library's default schedule, against the restart control
on the same seeds. One JSON line per run in results/pb_settings.jsonl; runs already
recorded are skipped, so the sweep resumes where it stopped. Settings are compared on
validation accuracy; test accuracy is reported beside it, never used to choose.

    .venv/bin/python benchmarks/pb_settings.py [--seeds 5] [--shard 0/2]
    .venv/bin/python benchmarks/pb_settings.py --summary > docs/pb_settings.md
    .venv/bin/python benchmarks/pb_settings.py --quick --out /tmp/s.jsonl   # seconds (CI)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from perforate import DendriteConfig
from perforate.experiments import datasets as data
from perforate.experiments import loop as training
from perforate.experiments import models
from perforate.experiments.stats import paired

RESULTS = Path(__file__).parent / "results" / "pb_settings.jsonl"
LR = 1e-2


def grid() -> list[dict]:
    out = [{"method": "restart", "objective": "-", "pool": 0, "v0": 0.0, "cand_lr": 0.0}]
    for objective, pool, v0, cand_lr in itertools.product(
        ("pearson", "covariance"), (1, 4, 8), (0.0, 0.1), (0.01, 0.05)
    ):
        out.append(
            {
                "method": "correlation",
                "objective": objective,
                "pool": pool,
                "v0": v0,
                "cand_lr": cand_lr,
            }
        )
    # Larger candidate init: do near-linear (small) candidates explain Pearson's weakness?
    for objective, init in itertools.product(("pearson", "covariance"), (0.1, 0.5)):
        out.append(
            {
                "method": "correlation",
                "objective": objective,
                "pool": 4,
                "v0": 0.0,
                "cand_lr": 0.05,
                "init": init,
            }
        )
    return out


def paired_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean of a - b over common seeds, the half-width of its 95% interval, the seeds."""
    p = paired(a, b, "maximize")
    return p.mean, (p.high - p.low) / 2, p.n


def key(setting: dict, seed: int) -> str:
    return json.dumps({**setting, "seed": seed}, sort_keys=True)


def done_keys(results: Path = RESULTS) -> set[str]:
    if not results.exists():
        return set()
    return {key(r["setting"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}


def run(seeds: int, shard: tuple[int, int], results: Path = RESULTS, quick: bool = False) -> None:
    """`quick`: the control and one setting, runs capped at 10 evaluations (for CI)."""
    torch.set_num_threads(1)
    splits = data.digits(seed=0)
    done = done_keys(results)
    settings = grid()[:2] if quick else grid()
    cap = {"max_epochs": 10} if quick else {}
    jobs = [(s, seed) for seed in range(seeds) for s in settings]
    for i, (setting, seed) in enumerate(jobs):
        if i % shard[1] != shard[0] or key(setting, seed) in done:
            continue
        if setting["method"] == "restart":
            config = DendriteConfig(method="restart", **cap)
        else:
            config = DendriteConfig(
                objective=setting["objective"],
                candidates_per_neuron=setting["pool"],
                output_weight_init=setting["v0"],
                candidate_init_scale=setting.get("init", 0.01),
                **cap,
            )
        torch.manual_seed(seed)
        result = training.fit_classifier(
            models.mlp(64, 8, 10),
            splits,
            config,
            seed=seed,
            lr=LR,
            candidate_lr=setting["cand_lr"] or None,
        )
        row = {
            "setting": setting,
            "seed": seed,
            "val": result.val,
            "test": result.test,
            "params": result.params,
            "dendrites_per_neuron": result.dendrites_per_neuron,
            "epochs": result.epochs,
            "seconds": result.seconds,
            "final_correlation": _last_correlation(result.history),
            "installed_output_std": _installed_std(result.history),
        }
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{setting} seed {seed}: val {result.val:.4f} test {result.test:.4f}", flush=True)


def _last_correlation(history: list[dict]) -> float | None:
    corr = [h["correlation"] for h in history if h["correlation"]]
    if not corr:
        return None
    return statistics.fmean(corr[-1].values())


def _installed_std(history: list[dict]) -> float | None:
    """Mean output std of installed dendrites: tiny means a near-linear, redundant feature."""
    stds = [v["mean_output_std"] for h in history for v in h.get("install", {}).values()]
    return statistics.fmean(stds) if stds else None


def summary(results: Path = RESULTS) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["setting"], sort_keys=True), []).append(r)
    control = next(v for k, v in groups.items() if json.loads(k)["method"] == "restart")
    ctrl_val = {r["seed"]: r["val"] for r in control}
    ctrl_test = {r["seed"]: r["test"] for r in control}
    lines = [
        "# PB settings on digits (MLP 64-8-10)",
        "",
        "Made by `.venv/bin/python benchmarks/pb_settings.py` then `--summary`. Adam lr "
        f"{LR} for neurons; library defaults otherwise. Accuracy in percent, mean over seeds; "
        "differences are paired by seed against the restart control (same seeds, same "
        "cycle schedule, no dendrites) with 95% intervals. Rows sorted by validation.",
        "",
        "| objective | pool | v0 | cand. lr | init | seeds | dend./neuron | params | val "
        "| val vs control | test | test vs control | last mean best r | installed std | epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mean(rs, f):
        return statistics.fmean(r[f] for r in rs)

    order = sorted(groups.items(), key=lambda kv: -mean(kv[1], "val"))
    for k, rs in order:
        s = json.loads(k)
        dv, hv, _ = paired_difference({r["seed"]: r["val"] for r in rs}, ctrl_val)
        dt, ht, _ = paired_difference({r["seed"]: r["test"] for r in rs}, ctrl_test)
        corr = [r["final_correlation"] for r in rs if r["final_correlation"] is not None]
        stds = [r["installed_output_std"] for r in rs if r.get("installed_output_std")]
        std = f"{statistics.fmean(stds):.3f}" if stds else "-"
        init = s.get("init", 0.01) if s["pool"] else "-"
        name = "restart control" if s["method"] == "restart" else s["objective"]
        lines.append(
            f"| {name} | {s['pool'] or '-'} | {s['v0'] if s['pool'] else '-'} | "
            f"{s['cand_lr'] or '-'} | {init} | {len(rs)} | "
            f"{mean(rs, 'dendrites_per_neuron'):.2f} | "
            f"{mean(rs, 'params'):.0f} | {100 * mean(rs, 'val'):.2f} | "
            f"{100 * dv:+.2f} ± {100 * hv:.2f} | {100 * mean(rs, 'test'):.2f} | "
            f"{100 * dt:+.2f} ± {100 * ht:.2f} | "
            f"{statistics.fmean(corr) if corr else float('nan'):.3f} | {std} | "
            f"{mean(rs, 'epochs'):.0f} |"
        )
    return "\n".join(lines) + "\n" + FINDINGS


FINDINGS = """
## Reading (5 seeds, digits: small, one validation sample is 0.28 points)

- **No setting is distinguishable from the restart control**: every 95% interval of the
  paired difference contains 0. And every PB point lies below the plain width ladder at
  equal parameters (`make demo`: H=16, 1,210 params, 94.5% test; H=32, 2,410, 95.8%).
- **Objective**: covariance ranks above Pearson on validation at equal settings, and the
  installed-std column says why: Pearson winners have output std 0.01 to 0.14 (inside the
  sigmoid's linear range, i.e. a linear function of the input, which the neuron's own
  weights already span), covariance winners 0.36 to 0.39 (saturating, genuinely
  non-linear). A larger candidate init (0.1, 0.5) does not rescue Pearson.
  Default changed to `covariance`.
- **Candidate learning rate**: 0.05 (5x the neurons') beats 0.01 for both objectives;
  at 0.01 Pearson candidates barely leave their init, and the runs with them end
  identical whatever the pool size or output-weight start. The demo uses 5x.
- **Pool size** (1, 4, 8) and **output-weight start** (0, or 0.1 signed against the
  error with bias compensation): no consistent effect; defaults stay 4 and 0 (exact
  function at install).
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two settings, one seed, short")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the records file")
    args = parser.parse_args()
    if args.quick:
        run(1, (0, 1), args.out, quick=True)
        print(summary(args.out), end="")
    elif args.summary:
        print(summary(args.out), end="")
    else:
        i, n = map(int, args.shard.split("/"))
        run(args.seeds, (i, n), args.out)
