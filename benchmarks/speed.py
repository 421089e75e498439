"""Speed: what dendrites cost beyond their arithmetic, and what the controller costs.

Every figure is a ratio measured in this process, the median of repeated timings, next to
the ratio the arithmetic alone would give (FLOPs of what actually runs, counted by hooks).

    .venv/bin/python benchmarks/speed.py            # writes benchmarks/results/speed.json
    .venv/bin/python benchmarks/speed.py --table    # prints the markdown for docs/performance.md
    .venv/bin/python benchmarks/speed.py --quick --out /tmp/speed.json   # seconds: CI's check
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import perforate
from perforate import DendriteConfig
from perforate.experiments import models

RESULTS = Path(__file__).parent / "results" / "speed.json"

SETUPS = {
    "mlp": (lambda: models.mlp(784, 64, 10), (256, 784), 300),
    "cnn": (lambda: models.cnn2d(8), (64, 1, 28, 28), 40),
    "resnet18": (lambda: models.resnet18(), (16, 3, 32, 32), 5),
}


def forward_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(all Linear/Conv forward FLOPs, those inside dendritic layers' base) for one batch."""
    total, wrapped = [0.0], [0.0]
    wrapped_ids = {id(layer.base) for layer in perforate.dendritic_layers(model).values()}

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            f = 2.0 * output.numel() * module.in_features
        else:
            f = 2.0 * output.numel() * module.in_channels * math.prod(module.kernel_size)
        total[0] += f
        if id(module) in wrapped_ids:
            wrapped[0] += f

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0], wrapped[0]


def time_steps(step, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ratio_to(plain_step, step, repeats: int, warmup: int = 2) -> float:
    """Median over repeats of (step time / plain step time), the two timed alternately so
    that drift in machine speed cancels."""
    for _ in range(warmup):
        plain_step()
        step()
    ratios = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_step()
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def make_step(model, x, y, params):
    opt = torch.optim.SGD(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def grown(build, k: int) -> nn.Module:
    torch.manual_seed(0)
    model = perforate.add_dendrites(build(), DendriteConfig())
    for layer in perforate.dendritic_layers(model).values():
        for _ in range(k):
            layer.start_dendrite_phase(candidates=1)
            layer.install(torch.zeros(layer.neurons, dtype=torch.long))
    return model


def statistics_bytes(layer) -> int:
    """Bytes of a layer's candidate statistics (the tensors of its `state_dict`)."""
    state = layer.stats.state_dict()
    return sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))


def bench_model(name: str, setups: dict = SETUPS) -> dict:
    build, shape, repeats = setups[name]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (shape[0],))
    plain = build()
    plain_step = make_step(plain, x, y, plain.parameters())
    plain_t = time_steps(plain_step, repeats)
    wrapped = grown(build, 0)
    f_total, f_wrapped = forward_flops(wrapped, x)
    share = f_wrapped / f_total
    out = {
        "model": name,
        "batch": shape[0],
        "params": sum(p.numel() for p in plain.parameters()),
        "plain_step_s": plain_t,
        "wrapped_share_of_flops": share,
        "neuron": [],
        "dendrite": [],
    }
    out["wrapped_k0_ratio"] = ratio_to(
        plain_step, make_step(wrapped, x, y, wrapped.parameters()), repeats
    )
    for k in (1, 2, 3):
        m = grown(build, k)
        params = [p for p in m.parameters() if p.requires_grad]
        ratio = ratio_to(plain_step, make_step(m, x, y, params), repeats)
        # Plain step ~ 3F (forward, input grads, weight grads). Frozen perforated dendrites
        # add only their forward: k * F_wrapped. The bound: 1 + k * share.
        ideal = (3 * f_total + k * f_wrapped) / (3 * f_total)
        out["neuron"].append(
            {
                "k": k,
                "ratio": ratio,
                "flop_ideal": ideal,
                "bound_1_plus_k_share": 1 + k * share,
                "vs_flop_ideal": ratio / ideal,
            }
        )
    for p in (1, 4, 8):
        m = grown(build, 0)
        for layer in perforate.dendritic_layers(m).values():
            layer.start_dendrite_phase(candidates=p)
        for q in m.parameters():
            q.requires_grad_(False)
        cands = [
            q
            for layer in perforate.dendritic_layers(m).values()
            for q in layer.candidate_parameters()
        ]
        for q in cands:
            q.requires_grad_(True)
        ratio = ratio_to(plain_step, make_step(m, x, y, cands), repeats)
        # Forward F + input-grad backward F (no weight grads) + candidates: forward and
        # weight grads, 2 * P * F_wrapped.
        ideal = (2 * f_total + 2 * p * f_wrapped) / (3 * f_total)
        stats_bytes = sum(
            statistics_bytes(layer) for layer in perforate.dendritic_layers(m).values()
        )
        out["dendrite"].append(
            {
                "P": p,
                "ratio": ratio,
                "flop_ideal": ideal,
                "bound_1_plus_P_share": 1 + p * share,
                "vs_flop_ideal": ratio / ideal,
                "stats_bytes_after_all_steps": stats_bytes,
            }
        )
    return out


def bench_controller(epochs: int = 40, build=models.resnet18, name: str = "ResNet-18") -> dict:
    torch.manual_seed(0)
    model = build()
    ctl = perforate.Perforator(
        model, DendriteConfig(patience=1000), optimizer=lambda p: torch.optim.SGD(p, lr=1e-3)
    )
    plain, improving = [], []
    for i in range(epochs):
        ctl.optimizer.step()  # no gradients: a stand-in for an epoch of training
        score = i / epochs if i % 4 == 0 else 0.0  # every 4th epoch sets a new best
        t0 = time.perf_counter()
        ctl.end_epoch(score)
        dt = time.perf_counter() - t0
        (improving if i % 4 == 0 else plain).append(dt)
    allt = plain + improving
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "median_ms": 1e3 * statistics.median(allt),
        "median_ms_no_new_best": 1e3 * statistics.median(plain),
        "median_ms_new_best": 1e3 * statistics.median(improving),
    }


def bench_inference(repeats: int = 200, compile_too: bool = True) -> list[dict]:
    out = []
    x = torch.randn(1024, 784)
    for k in (1, 2):
        perf = grown(lambda: models.mlp(784, 64, 10), k).eval()
        for layer in perforate.dendritic_layers(perf).values():
            layer.start_inference()
        same_flops = models.mlp(784, 64 * (1 + k), 10).eval()  # equal Linear FLOPs
        with torch.no_grad():
            tp = time_steps(lambda m=perf: m(x), repeats)
            ts = time_steps(lambda m=same_flops: m(x), repeats)
            r = ratio_to(lambda m=same_flops: m(x), lambda m=perf: m(x), repeats)
            rc = math.nan
            if compile_too:
                cp, cs = torch.compile(perf), torch.compile(same_flops)
                rc = ratio_to(lambda m=cs: m(x), lambda m=cp: m(x), repeats)
        out.append(
            {
                "model": f"mlp 784-64-10, k={k}",
                "vs_plain_same_flops": r,
                "compiled_vs_compiled_plain": rc,
                "perforated_ms": 1e3 * tp,
                "plain_same_flops_ms": 1e3 * ts,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every measurement once on a small MLP, no torch.compile (seconds; for CI)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        setups = {"mlp": (lambda: models.mlp(32, 8, 10), (16, 32), 2)}
        models_, controller = (
            [bench_model("mlp", setups)],
            bench_controller(6, lambda: models.mlp(32, 8, 10), "MLP 32-8-10"),
        )
        inference = bench_inference(2, compile_too=False)
    else:
        models_ = [bench_model(n) for n in SETUPS]
        controller, inference = bench_controller(), bench_inference()
    result = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": args.threads,
        "quick": args.quick,
        "models": models_,
        "controller": controller,
        "inference": inference,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))


def table(r: dict) -> str:
    lines = [
        f"torch {r['torch']}, {r['machine']}, {r['threads']} threads; ratios are medians "
        "measured in one process.",
        "",
        "| model | plain step | wrapped, k=0 | neuron k=1 | k=2 | k=3 | dendrite P=1 | P=4 | P=8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        cells = [
            f"{n['ratio']:.2f}x (ideal {n['flop_ideal']:.2f}, bound "
            f"{n['bound_1_plus_k_share']:.2f})"
            for n in m["neuron"]
        ]
        cells += [f"{d['ratio']:.2f}x (ideal {d['flop_ideal']:.2f})" for d in m["dendrite"]]
        lines.append(
            f"| {m['model']} | {1e3 * m['plain_step_s']:.1f} ms | "
            f"{m['wrapped_k0_ratio']:.2f}x | " + " | ".join(cells) + " |"
        )
    c = r["controller"]
    lines += [
        "",
        f"Controller, `end_epoch` on {c['model'].replace('resnet18', 'ResNet-18')} "
        f"({c['params']:,} parameters), nothing "
        f"written: median {c['median_ms']:.2f} ms ({c['median_ms_no_new_best']:.2f} ms "
        f"without a new best, {c['median_ms_new_best']:.2f} ms when the best state is "
        "copied).",
        "",
    ]
    for i in r["inference"]:
        lines.append(
            f"Inference, {i['model']}: {i['vs_plain_same_flops']:.2f}x a plain MLP of "
            f"the same FLOPs eagerly ({i['perforated_ms']:.2f} vs "
            f"{i['plain_same_flops_ms']:.2f} ms per 1024 rows); "
            f"{i['compiled_vs_compiled_plain']:.2f}x with both under torch.compile."
        )
    stats = [
        (m["model"], d["P"], d["stats_bytes_after_all_steps"])
        for m in r["models"]
        for d in m["dendrite"]
    ]
    lines += [
        "",
        "Candidate statistics memory (float64, independent of the number of batches): "
        + ", ".join(f"{n} P={p}: {b / 1024:.1f} KiB" for n, p, b in stats)
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
