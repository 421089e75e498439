"""The prepared device check (issue 24): one script, JSON lines out, non-zero exit on a
failed check.

    python benchmarks/gpu_check.py                         # CUDA when present, else CPU
    python benchmarks/gpu_check.py --device cpu --small    # what CI runs (under a minute)
    python benchmarks/gpu_check.py --out gpu_check.jsonl   # the lines also go to a file

Every line is one JSON object with `check`, `ok` and the figures; a check that cannot run
here says why (`skipped`) and counts as ok; the last line (`summary`) lists failures. On
one H100 the whole script is meant to take under 5 minutes, with nothing downloaded
(Fashion-MNIST is read from the Debian package's folder; random data of the same shape
where it is missing, and the line says so).

Checks (docs/performance.md, "GPU", says what each measures):

    parity_layers       grown Linear/Conv layers on the device (float32) against float64
                        on the CPU: outputs, input and parameter gradients
    parity_candidates   a dendrite phase's candidate draw (bit for bit), statistics and
                        candidate gradients, device against CPU float64
    host_syncs          per training step, in each phase: reads back to the host and
                        data-dependent ops (dispatch counter; on CUDA also
                        torch.cuda.set_sync_debug_mode), and in end_step between judgements
    pb_run              a forced PB run (fixed phases) on the device with a checkpoint,
                        resumed on the device and on the CPU, its model file on the CPU
    bf16_autocast       a PB run under bf16 autocast installs dendrites and stays finite
    compile             torch.compile(fullgraph=True) of a grown model equals eager
    step_ratios         ResNet-18 (hand-built, batch 256, 32x32) step time against the
                        plain model in one process, fp32 and bf16, next to FLOP ideals
    whole_runs          plain, restart and PB-default runs of a small CNN on
                        Fashion-MNIST with the data on the device: wall-time ratios
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import perforate
from perforate import DendriteConfig, DendriticLayer, Perforator
from perforate.experiments.models import cnn2d
from perforate.kinds import kind_of
from perforate.layers import Phase

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed.py, beside this
from speed import forward_flops  # one FLOP count for both scripts

FASHION = "/usr/share/datasets/fashion-mnist"
LINES: list[dict] = []
_OUT: list = []
_CHECK_START = [time.perf_counter()]


def emit(check: str, ok: bool, **fields) -> None:
    seconds = round(time.perf_counter() - _CHECK_START[0], 2)
    line = {"check": check, "ok": bool(ok), **fields, "seconds": fields.get("seconds", seconds)}
    text = json.dumps(line, default=_jsonable)
    print(text, flush=True)
    for fh in _OUT:
        fh.write(text + "\n")
        fh.flush()
    LINES.append(line)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exact_fp32(on: bool) -> None:
    """TF32 off for the parity checks (float32 means float32); defaults for timings."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = not on


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64 on the CPU (0 for two zero tensors)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


# --- host-sync counter (tests/test_host_syncs.py uses this one) -------------------------
aten = torch.ops.aten
_DATA_DEPENDENT = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.equal,
    aten.is_nonzero,
    aten.repeat_interleave,
}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class SyncCounter(TorchDispatchMode):
    """Reads back to the host and data-dependent ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        bool_index = packet in _INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ())
        )
        if packet in _DATA_DEPENDENT or bool_index:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return len(self.ops)


def count_syncs(device: torch.device, fn: Callable[[], None]) -> dict:
    """Counted host reads of `fn`: dispatch counter always, CUDA sync debug mode on CUDA."""
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with SyncCounter() as counter:
                fn()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    out["dispatch"] = len(counter.ops)
    if counter.ops:
        out["ops"] = sorted(set(counter.ops))
    if device.type == "cuda":
        out["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


# --- models ---------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet18(width: int = 64, classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), built by hand."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        layers += [_Block(cin, cout, 1 if i == 0 else 2), _Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def grow_layer(layer: DendriticLayer, gen: torch.Generator, cycles: int = 2) -> None:
    """Install `cycles` rounds of candidates (selectively), then randomise every weight so
    that the dendrites matter in the output."""
    for cycle in range(cycles):
        layer.start_dendrite_phase(candidates=2, generator=gen)
        choice = torch.randint(0, 2, (layer.neurons,), generator=gen)
        if cycle == 0:
            choice[-1] = -1  # selective: one neuron ends with fewer dendrites
        layer.install(choice.to(layer.dendrite_count.device))
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen).mul_(0.5).to(p))


def grow_model(model: nn.Module, seed: int = 0) -> nn.Module:
    perforate.add_dendrites(model)
    gen = torch.Generator().manual_seed(seed)
    for layer in perforate.dendritic_layers(model).values():
        for pick in (0, 1):
            layer.start_dendrite_phase(candidates=2, generator=gen)
            choice = torch.full((layer.neurons,), pick)
            choice[-1] = -1
            layer.install(choice.to(layer.dendrite_count.device))
    return model


# --- checks ---------------------------------------------------------------------------
def check_parity_layers(dev: torch.device, small: bool) -> None:
    """Grown layers: device float32 against CPU float64, outputs and gradients."""
    exact_fp32(True)
    cases = {
        "linear": (lambda: nn.Linear(24, 10), (16, 24)),
        "linear_seq": (lambda: nn.Linear(12, 6), (4, 5, 12)),
        "conv2d": (lambda: nn.Conv2d(3, 6, 3, padding=1), (4, 3, 10, 10)),
        "conv1d": (lambda: nn.Conv1d(4, 5, 3, stride=2), (3, 4, 17)),
    }
    for name, (build, shape) in cases.items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        base = build()
        layer = DendriticLayer(base, kind_of(base), DendriteConfig())
        grow_layer(layer, gen)
        ref = copy.deepcopy(layer).double()
        on = copy.deepcopy(layer).to(dev)
        x = torch.randn(*shape, generator=gen)
        w = torch.randn_like(layer(x), memory_format=torch.contiguous_format)
        results = {}
        for tag, mod, dtype, d in (("ref", ref, torch.float64, "cpu"), ("dev", on, None, dev)):
            xi = x.to(d, dtype or x.dtype).requires_grad_(True)
            y = mod(xi)
            (y * w.to(d, y.dtype)).sum().backward()
            grads = {n: p.grad for n, p in mod.named_parameters() if p.grad is not None}
            results[tag] = (y, xi.grad, grads)
        (y0, gx0, g0), (y1, gx1, g1) = results["ref"], results["dev"]
        errs = {"output": rel_err(y1, y0), "input_grad": rel_err(gx1, gx0)}
        errs["param_grads"] = max(rel_err(g1[n], g0[n]) for n in g0) if g0 else 0.0
        same_keys = sorted(g0) == sorted(g1)
        tol = 1e-5
        emit(
            "parity_layers",
            same_keys and max(errs.values()) <= tol,
            layer=name,
            dendrites=int(layer.dendrite_count.sum()),
            rel_err=errs,
            tolerance=tol,
            reference="cpu float64",
            why_tolerance="float32 against float64: rounding of sums of a few hundred terms",
        )


def check_parity_candidates(dev: torch.device, small: bool) -> None:
    """A dendrite phase's draw, statistics and candidate gradients across devices."""
    exact_fp32(True)
    for name, build, shape in (
        ("linear", lambda: nn.Linear(20, 8), (64, 20)),
        ("conv2d", lambda: nn.Conv2d(3, 5, 3, padding=1), (8, 3, 8, 8)),
    ):
        torch.manual_seed(0)
        base = build()
        cpu_layer = DendriticLayer(copy.deepcopy(base), kind_of(base), DendriteConfig())
        dev_layer = DendriticLayer(copy.deepcopy(base).to(dev), kind_of(base), DendriteConfig())
        # Candidates drawn from the controller's kind of generator: a CPU one.
        cpu_layer.start_dendrite_phase(4, generator=torch.Generator().manual_seed(7))
        dev_layer.start_dendrite_phase(4, generator=torch.Generator().manual_seed(7))
        draw_equal = all(
            torch.equal(a.detach().cpu(), b.detach())
            for a, b in zip(
                dev_layer.candidate_parameters(), cpu_layer.candidate_parameters(), strict=True
            )
        )
        ref = cpu_layer.double()
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):  # three batches into the running statistics
            x = torch.randn(*shape, generator=gen)
            target = torch.randn_like(ref(x.double()))
            for mod, d, dtype in ((ref, "cpu", torch.float64), (dev_layer, dev, torch.float32)):
                y = mod(x.to(d, dtype))
                nn.functional.mse_loss(y, target.to(d, dtype)).backward()
        errs = {
            f: rel_err(getattr(dev_layer.stats, f), getattr(ref.stats, f))
            for f in ("count", "mean_v", "m_ve", "m_vv", "m_ee")
        }
        errs["pearson"] = rel_err(dev_layer.stats.pearson(), ref.stats.pearson())
        errs["candidate_grads"] = max(
            rel_err(a.grad, b.grad)
            for a, b in zip(
                dev_layer.candidate_parameters(), ref.candidate_parameters(), strict=True
            )
        )
        tol = 1e-3
        emit(
            "parity_candidates",
            draw_equal and max(errs.values()) <= tol,
            layer=name,
            draw_bit_identical=draw_equal,
            rel_err=errs,
            tolerance=tol,
            why_tolerance="float32 batches against float64: the candidates' outputs vary "
            "by about 1e-3 around 0.5 at the N(0, 0.01) start, so centring them in float32 "
            "keeps about four digits, and the Pearson gradient divides by their spread",
        )


class Loop:
    """A Perforator on a small CNN on the device, stepping on fixed random batches."""

    def __init__(self, dev: torch.device, config: DendriteConfig, seed: int = 0, side: int = 8):
        torch.manual_seed(seed)
        self.dev = dev
        self.model = cnn2d(4, 3, side).to(dev)
        self.ctl = Perforator(
            self.model, config, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), seed=seed
        )
        gen = torch.Generator().manual_seed(seed + 1)
        self.batches = [
            (
                torch.randn(16, 1, side, side, generator=gen).to(dev),
                torch.randint(0, 3, (16,), generator=gen).to(dev),
            )
            for _ in range(4)
        ]
        self.i = 0

    def train_step(self, autocast: bool = False) -> torch.Tensor:
        x, t = self.batches[self.i % len(self.batches)]
        self.i += 1
        ctl = self.ctl
        ctl.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(ctl.wrapped(x), t)
        loss.backward()
        ctl.optimizer.step()
        return loss.detach()

    def epoch(self, steps: int, score: float, autocast: bool = False) -> list[torch.Tensor]:
        losses = [self.train_step(autocast) for _ in range(steps)]
        self.ctl.end_epoch(score)
        return losses


def check_host_syncs(dev: torch.device, small: bool) -> None:
    """Host reads per training step (forward, backward, optimizer step) in each phase,
    and in end_step between judgements (0 wanted everywhere; judgements read values)."""
    cfg = DendriteConfig(switch_mode="budget", patience=1, dendrite_check_steps=3)
    loop = Loop(dev, cfg)
    for _ in range(2):
        loop.train_step()  # warm-up: lazy initialisation may read once
    rows = {"neuron_plain": count_syncs(dev, loop.train_step)}
    loop.ctl.end_epoch(0.5)
    loop.train_step()
    loop.ctl.end_epoch(0.4)
    assert loop.ctl.phase == Phase.DENDRITE, loop.ctl.phase
    steps, between, judged = [], [], []
    for _ in range(6):
        steps.append(count_syncs(dev, loop.train_step))
        at_judgement = loop.ctl._window["steps"] + 1 >= loop.ctl.switching.check_steps
        (judged if at_judgement else between).append(count_syncs(dev, loop.ctl.end_step))
    rows["dendrite"] = steps[-1]
    rows["dendrite_max"] = {k: max(s.get(k, 0) for s in steps) for k in steps[0] if k != "ops"}
    rows["end_step_between_judgements_max"] = {
        k: max(s.get(k, 0) for s in between) for k in between[0] if k != "ops"
    }
    rows["end_step_at_judgement"] = [{k: v for k, v in s.items() if k != "ops"} for s in judged]
    while loop.ctl.phase == Phase.DENDRITE:
        loop.train_step()
        loop.ctl.end_step()
        loop.ctl.end_epoch(0.45)
    loop.train_step()
    rows["neuron_with_dendrites"] = count_syncs(dev, loop.train_step)
    rows["dendrites"] = loop.ctl.dendrites_kept
    hot = [
        rows["neuron_plain"],
        rows["dendrite_max"],
        rows["neuron_with_dendrites"],
        rows["end_step_between_judgements_max"],
    ]
    ok = all(v == 0 for r in hot for k, v in r.items() if k != "ops") and rows["dendrites"] > 0
    emit("host_syncs", ok, **rows)


def _pb_config() -> DendriteConfig:
    return DendriteConfig(
        switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=2, max_cycles=3
    )


def check_pb_run(dev: torch.device, small: bool) -> None:
    """A forced PB run on the device; checkpoint mid dendrite phase; resume on the device
    and on the CPU; the final model file loaded on the CPU."""
    exact_fp32(True)
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    steps, total, cut = 3, 7, 5  # epochs 1 N | 2-3 D | 4 N | 5-6 D | 7 N; cut mid phase
    scores = [0.1 * (i + 1) for i in range(total)]  # rising: every cycle is accepted
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt.safetensors"
        ref = Loop(dev, _pb_config())
        for i in range(cut):
            ref.epoch(steps, scores[i])
        ref.ctl.save_checkpoint(ckpt)
        phase_at_cut = ref.ctl.phase.value
        for i in range(cut, total):
            ref.epoch(steps, scores[i])
        ref_state = ref.model.state_dict()
        events = [r.event for r in ref.ctl.history]
        out = {"phase_at_checkpoint": phase_at_cut, "dendrites": ref.ctl.dendrites_kept}
        ok = phase_at_cut == "dendrite" and ref.ctl.dendrites_kept > 0
        cpu = torch.device("cpu")
        for where in [dev] if dev == cpu else [dev, cpu]:
            loop = Loop(where, _pb_config())  # a fresh model on `where`, same batches
            loop.ctl = Perforator.resume(  # (its own checkpoints elsewhere: ckpt stays)
                ckpt,
                loop.model,
                optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                checkpoint_path=Path(tmp) / f"resumed_{where.type}.safetensors",
            )
            loop.i = cut * steps
            for i in range(cut, total):
                loop.epoch(steps, scores[i])
            state = loop.model.state_dict()
            err = max(rel_err(state[k], ref_state[k]) for k in ref_state)
            same_events = [r.event for r in loop.ctl.history] == events
            same_counts = loop.ctl.dendrite_counts() == ref.ctl.dendrite_counts()
            # Same device: the same kernels (bit for bit expected with deterministic cuDNN;
            # 1e-6 leaves room for an atomic-add kernel). CPU after the device: float32
            # rounding differs, amplified by 6 SGD steps.
            tol = 1e-6 if where == dev else 1e-4
            key = "resume_same_device" if where == dev else "resume_on_cpu"
            out[key] = {
                "rel_err": err,
                "bit_identical": err == 0.0,
                "tolerance": tol,
                "same_events": same_events,
            }
            ok = ok and err <= tol and same_events and same_counts
        model_file = Path(tmp) / "model.safetensors"
        perforate.save(ref.model, model_file)
        torch.manual_seed(0)
        on_cpu = perforate.load(cnn2d(4, 3, 8), model_file).eval()
        ref.model.eval()
        x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            err = rel_err(on_cpu(x), ref.model(x.to(dev)))
        out["model_file_on_cpu"] = {"rel_err": err, "tolerance": 1e-5}
        ok = ok and err <= 1e-5
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic = False
    emit("pb_run", ok, **out)


def check_bf16(dev: torch.device, small: bool) -> None:
    """A PB run under bf16 autocast: dendrites installed, everything finite."""
    loop = Loop(dev, _pb_config(), seed=2)
    losses = []
    for i in range(7):
        losses += loop.epoch(3, 0.1 * (i + 1), autocast=True)
        if loop.ctl.dendrites_kept and loop.ctl.phase == Phase.NEURON:
            losses += loop.epoch(3, 1.0, autocast=True)  # a neuron phase with dendrites
            break
    finite_params = all(torch.isfinite(p).all().item() for p in loop.model.parameters())
    finite_loss = all(torch.isfinite(t).item() for t in losses)
    kept = loop.ctl.dendrites_kept
    emit(
        "bf16_autocast",
        kept > 0 and finite_params and finite_loss,
        dendrites=kept,
        params_finite=finite_params,
        losses_finite=finite_loss,
        last_loss=float(losses[-1]),
        skipped_batches=sum(r.skipped_batches for r in loop.ctl.history),
    )


def check_compile(dev: torch.device, small: bool) -> None:
    """torch.compile(fullgraph=True) of a grown model against eager: inference outputs
    and one neuron-phase training step's gradients."""
    exact_fp32(True)
    try:
        import torch._dynamo
    except ImportError as exc:  # pragma: no cover - torch without dynamo
        emit("compile", True, skipped=f"torch._dynamo unavailable: {exc}")
        return
    if sys.platform == "win32":
        emit("compile", True, skipped="torch.compile is not supported on Windows")
        return
    # The CPU smoke run traces with dynamo and AOT autograd but generates no code (a C++
    # compile would take most of CI's minute); the device run uses inductor.
    backend = "aot_eager" if small and dev.type == "cpu" else "inductor"
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = grow_model(cnn2d(4, 3, 8)).to(dev)
    eager = copy.deepcopy(model)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dev)
    t = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2)).to(dev)
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        loss_c = nn.functional.cross_entropy(compiled(x), t)
        loss_c.backward()
        model.eval()
        with torch.no_grad():
            out_c = compiled(x)
    except Exception as exc:
        name = type(exc).__name__
        if "Triton" in str(exc) or "triton" in str(exc) or name == "BackendCompilerFailed":
            emit("compile", True, skipped=f"no working compiler backend here: {name}: {exc}"[:300])
            return
        raise
    compile_s = time.perf_counter() - t0
    loss_e = nn.functional.cross_entropy(eager(x), t)
    loss_e.backward()
    eager.eval()
    with torch.no_grad():
        out_e = eager(x)
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    own = dict(model.named_parameters())
    errs = {
        "output": rel_err(out_c, out_e),
        "loss": rel_err(loss_c, loss_e),
        "grads": max(rel_err(own[n].grad, g) for n, g in grads.items()),
    }
    tol = 1e-5
    emit(
        "compile",
        max(errs.values()) <= tol,
        backend=backend,
        fullgraph=True,
        rel_err=errs,
        tolerance=tol,
        why_tolerance="fused kernels sum in another order",
        compile_and_first_steps_s=round(compile_s, 2),
    )
    torch._dynamo.reset()


def check_step_ratios(dev: torch.device, small: bool) -> None:
    """ResNet-18 step time over the plain model's, timed alternately in one process."""
    exact_fp32(False)  # PyTorch's defaults: what users get
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    width, batch, repeats = (8, 8, 3) if small else (64, 256, 20)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32).to(dev)
    y = torch.randint(0, 10, (batch,)).to(dev)

    def make_step(model, params, bf16):
        opt = torch.optim.SGD(params, lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sync(dev)

        return step

    def ratio(plain_step, step) -> tuple[float, float]:
        for _ in range(2):
            plain_step(), step()
        ratios, plain_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            plain_step()
            t1 = time.perf_counter()
            step()
            t2 = time.perf_counter()
            ratios.append((t2 - t1) / (t1 - t0))
            plain_t.append(t1 - t0)
        return statistics.median(ratios), statistics.median(plain_t)

    plain = resnet18(width).to(dev)
    wrapped = perforate.add_dendrites(copy.deepcopy(plain))
    f_total, f_wrapped = forward_flops(wrapped, x)
    grown = copy.deepcopy(wrapped)
    for layer in perforate.dendritic_layers(grown).values():
        layer.start_dendrite_phase(candidates=1)
        layer.install(torch.zeros(layer.neurons, dtype=torch.long, device=dev))
    dendrite = copy.deepcopy(wrapped)
    for layer in perforate.dendritic_layers(dendrite).values():
        layer.start_dendrite_phase(candidates=4)
    cands = [
        q
        for lay in perforate.dendritic_layers(dendrite).values()
        for q in lay.candidate_parameters()
    ]
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        plain_step = make_step(plain, plain.parameters(), bf16)
        rows = {}
        for name, model, params, ideal in (
            ("wrapped_k0", wrapped, wrapped.parameters(), 1.0),
            (
                "neuron_k1",
                grown,
                [p for p in grown.parameters() if p.requires_grad],
                (3 * f_total + f_wrapped) / (3 * f_total),
            ),
            ("dendrite_P4", dendrite, cands, (2 * f_total + 8 * f_wrapped) / (3 * f_total)),
        ):
            r, plain_s = ratio(plain_step, make_step(model, params, bf16))
            rows[name] = {"ratio": round(r, 3), "flop_ideal": round(ideal, 3)}
        emit(
            "step_ratios",
            all(math.isfinite(v["ratio"]) for v in rows.values()),
            model=f"resnet18 width {width}",
            batch=batch,
            precision=precision,
            plain_step_ms=round(1e3 * plain_s, 2),
            repeats=repeats,
            **rows,
        )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False


def _fashion(dev: torch.device, small: bool, folder: str):
    """Fashion-MNIST splits on the device, or random data of the same shape (said so)."""
    try:
        from perforate.experiments import datasets

        s = datasets.idx_directory(folder, seed=0, train_limit=2000 if small else None)
        x_tr, y_tr, x_va, y_va = s.x_train, s.y_train, s.x_val, s.y_val
        x_tr, x_va = x_tr.reshape(-1, 1, 28, 28), x_va.reshape(-1, 1, 28, 28)
        if small:
            x_va, y_va = x_va[:1000], y_va[:1000]
        source = f"Fashion-MNIST from {folder}"
    except Exception as exc:  # missing package folder, or no experiments module
        n_tr, n_va = (512, 256) if small else (50_000, 10_000)
        gen = torch.Generator().manual_seed(0)
        x_tr = torch.randn(n_tr, 1, 28, 28, generator=gen)
        y_tr = torch.randint(0, 10, (n_tr,), generator=gen)
        x_va = torch.randn(n_va, 1, 28, 28, generator=gen)
        y_va = torch.randint(0, 10, (n_va,), generator=gen)
        source = f"random data of Fashion-MNIST's shape ({type(exc).__name__}: {exc})"[:200]
    return [t.to(dev) for t in (x_tr, y_tr, x_va, y_va)], source


def check_whole_runs(dev: torch.device, small: bool, folder: str) -> None:
    """Whole runs with the data on the device: plain, restart control and PB defaults."""
    exact_fp32(False)
    (x_tr, y_tr, x_va, y_va), source = _fashion(dev, small, folder)
    batch = 64 if small else 128
    cap_epochs, cap_s = (4, 15.0) if small else (30, 45.0)
    extra = {"patience": 2, "dendrite_check_steps": 4} if small else {}
    arms = {
        "plain": {"method": "restart", "max_cycles": 0},
        "restart": {"method": "restart"},
        "pb": {},
    }
    results = {}
    for arm, settings in arms.items():
        torch.manual_seed(0)
        model = cnn2d(8).to(dev)
        cfg = DendriteConfig(max_epochs=cap_epochs, **{**extra, **settings})
        ctl = Perforator(model, cfg, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), seed=0)
        gen = torch.Generator().manual_seed(1)
        n = len(y_tr)
        sync(dev)
        t0 = time.perf_counter()
        capped = False
        while not ctl.done:
            model.train()
            order = torch.randperm(n, generator=gen).to(dev)
            for i in range(0, n - batch + 1, batch):
                idx = order[i : i + batch]
                ctl.optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(ctl.wrapped(x_tr[idx]), y_tr[idx]).backward()
                ctl.optimizer.step()
                if ctl.end_step():
                    break
            model.eval()
            with torch.no_grad():
                correct = sum(
                    (model(x_va[i : i + 1000]).argmax(1) == y_va[i : i + 1000]).sum()
                    for i in range(0, len(y_va), 1000)
                )
            ctl.end_epoch(float(correct) / len(y_va))
            if not ctl.done and time.perf_counter() - t0 > cap_s:
                ctl.finish()
                capped = True
        sync(dev)
        results[arm] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "epochs": ctl.epoch,
            "best_val": ctl.best_score,
            "dendrites": ctl.dendrites_kept,
            "capped": capped,
        }
    base = results["plain"]["wall_s"]
    for r in results.values():
        r["wall_ratio_to_plain"] = round(r["wall_s"] / base, 3)
    ok = all(math.isfinite(r["best_val"]) for r in results.values())
    emit(
        "whole_runs",
        ok,
        data=source,
        batch=batch,
        max_epochs=cap_epochs,
        time_cap_s=cap_s,
        **results,
    )


CHECKS = {
    "parity_layers": check_parity_layers,
    "parity_candidates": check_parity_candidates,
    "host_syncs": check_host_syncs,
    "pb_run": check_pb_run,
    "bf16_autocast": check_bf16,
    "compile": check_compile,
    "step_ratios": check_step_ratios,
    "whole_runs": check_whole_runs,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--small", action="store_true", help="small sizes: the CI smoke run")
    parser.add_argument("--only", default="", help="comma-separated checks (default: all)")
    parser.add_argument("--data", default=FASHION, help="Fashion-MNIST IDX folder")
    parser.add_argument("--out", default=None, help="also write the JSON lines to this file")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    dev = torch.device("cpu" if name == "auto" else name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"check": "setup", "ok": False, "error": "CUDA is not available"}))
        return 2
    chosen = [c for c in args.only.split(",") if c] or list(CHECKS)
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    if args.out:
        _OUT.append(open(args.out, "w"))  # noqa: SIM115 - closed at exit
    emit(
        "setup",
        True,
        device=str(dev),
        card=torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        torch=torch.__version__,
        perforate=perforate.__version__,
        small=args.small,
        threads=torch.get_num_threads(),
    )
    start = time.perf_counter()
    for check in chosen:
        _CHECK_START[0] = time.perf_counter()
        try:
            if check == "whole_runs":
                check_whole_runs(dev, args.small, args.data)
            else:
                CHECKS[check](dev, args.small)
        except Exception as exc:
            emit(
                check,
                False,
                error=f"{type(exc).__name__}: {exc}",
                where=traceback.format_exc().strip().splitlines()[-3:],
            )
    failed = sorted({line["check"] for line in LINES if not line["ok"]})
    emit("summary", not failed, failed=failed, seconds=round(time.perf_counter() - start, 2))
    for fh in _OUT:
        fh.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
