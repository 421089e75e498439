"""Which objective, pool size, output-weight start and candidate learning rate work?

Digits, MLP 64-8-10, PB with the library's default schedule, against the restart control
on the same seeds. One JSON line per run in results/pb_settings.jsonl; runs already
recorded are skipped, so the sweep resumes where it stopped. Settings are compared on
validation accuracy; test accuracy is reported beside it, never used to choose.

    .venv/bin/python benchmarks/pb_settings.py [--seeds 5] [--shard 0/2]
    .venv/bin/python benchmarks/pb_settings.py --summary > docs/pb_settings.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from perforate import DendriteConfig, data, training
from perforate.report import paired_difference

RESULTS = Path(__file__).parent / "results" / "pb_settings.jsonl"
LR = 1e-2


def grid() -> list[dict]:
    out = [{"method": "restart", "objective": "-", "pool": 0, "v0": 0.0, "cand_lr": 0.0}]
    for objective, pool, v0, cand_lr in itertools.product(
        ("pearson", "covariance"), (1, 4, 8), (0.0, 0.1), (0.01, 0.05)
    ):
        out.append({"method": "correlation", "objective": objective, "pool": pool, "v0": v0,
                    "cand_lr": cand_lr})
    return out


def key(setting: dict, seed: int) -> str:
    return json.dumps({**setting, "seed": seed}, sort_keys=True)


def done_keys() -> set[str]:
    if not RESULTS.exists():
        return set()
    return {key(r["setting"], r["seed"]) for r in map(json.loads, RESULTS.read_text().splitlines())}


def run(seeds: int, shard: tuple[int, int]) -> None:
    torch.set_num_threads(1)
    splits = data.digits(seed=0)
    done = done_keys()
    jobs = [(s, seed) for seed in range(seeds) for s in grid()]
    for i, (setting, seed) in enumerate(jobs):
        if i % shard[1] != shard[0] or key(setting, seed) in done:
            continue
        if setting["method"] == "restart":
            config = DendriteConfig(method="restart")
        else:
            config = DendriteConfig(objective=setting["objective"],
                                    candidates_per_neuron=setting["pool"],
                                    output_weight_init=setting["v0"])
        torch.manual_seed(seed)
        result = training.fit_classifier(
            training.mlp(64, 8, 10), splits, config, seed=seed, lr=LR,
            candidate_lr=setting["cand_lr"] or None,
        )
        row = {"setting": setting, "seed": seed, "val": result.val, "test": result.test,
               "params": result.params, "dendrites_per_neuron": result.dendrites_per_neuron,
               "epochs": result.epochs, "seconds": result.seconds,
               "final_correlation": _last_correlation(result.history)}
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{setting} seed {seed}: val {result.val:.4f} test {result.test:.4f}", flush=True)


def _last_correlation(history: list[dict]) -> float | None:
    corr = [h["correlation"] for h in history if h["correlation"]]
    if not corr:
        return None
    return statistics.fmean(corr[-1].values())


def summary() -> str:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
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
        "| objective | pool | v0 | cand. lr | seeds | dend./neuron | params | val | val vs control "
        "| test | test vs control | last mean best r | epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def mean(rs, f):
        return statistics.fmean(r[f] for r in rs)
    order = sorted(groups.items(), key=lambda kv: -mean(kv[1], "val"))
    for k, rs in order:
        s = json.loads(k)
        dv, hv, _ = paired_difference({r["seed"]: r["val"] for r in rs}, ctrl_val)
        dt, ht, _ = paired_difference({r["seed"]: r["test"] for r in rs}, ctrl_test)
        corr = [r["final_correlation"] for r in rs if r["final_correlation"] is not None]
        name = "restart control" if s["method"] == "restart" else s["objective"]
        lines.append(
            f"| {name} | {s['pool'] or '-'} | {s['v0'] if s['pool'] else '-'} | "
            f"{s['cand_lr'] or '-'} | {len(rs)} | {mean(rs, 'dendrites_per_neuron'):.2f} | "
            f"{mean(rs, 'params'):.0f} | {100 * mean(rs, 'val'):.2f} | "
            f"{100 * dv:+.2f} ± {100 * hv:.2f} | {100 * mean(rs, 'test'):.2f} | "
            f"{100 * dt:+.2f} ± {100 * ht:.2f} | "
            f"{statistics.fmean(corr) if corr else float('nan'):.3f} | {mean(rs, 'epochs'):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        print(summary(), end="")
    else:
        i, n = map(int, args.shard.split("/"))
        run(args.seeds, (i, n))
