"""`perforate compare`: do dendrites pay on MY model? Arms over paired seeds, then a verdict.

    result = compare("study.toml", out="runs/mystudy", seeds=3, device="auto")
    result["verdict"]["sentence"]

Data flow: study -> chains of (arm, seed) jobs (engine) -> run records (ledger) ->
paired comparisons (stats) -> verdicts (verdict) -> compare.json / compare.md /
compare.png (render). Running the same command again resumes: finished runs are skipped,
a killed run continues from its checkpoint. The report is written once every run of the
study is in the ledger (by whichever process completes it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .arms import Arm
from .engine import Layout, Runner, chains, run_chains, shard
from .ledger import Ledger
from .runs import preflight
from .study import Study, StudyError
from .task import device_of
from .verdict import ALPHA, LEVEL, Comparison, judge_family, study_verdict, with_checks

log = logging.getLogger(__name__)

REPORT_VERSION = 1


def looks(max_seeds: int) -> list[int]:
    """Seed counts at which `--seeds auto` looks: 3, 5, 8, 12, 20, ... up to max_seeds."""
    out = [n for n in (3, 5, 8, 12, 20, 30, 50, 100, 200, 500, 1000) if n < max_seeds]
    return [*out, max_seeds]


def compare(
    study: Study | str | os.PathLike,
    out: str | os.PathLike | None = None,
    seeds: int | str | None = None,
    device: str = "auto",
    jobs: int = 1,
    shard_of: tuple[int, int] = (0, 1),
    arms: Sequence[str] | None = None,
    log_line: Callable[[str], None] | None = print,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Run a study (or what is missing of it) and return its report, or None while other
    shards still have runs to do. `seeds`: a count, "auto" (sequential looks), or None for
    the study's `[compare] seeds` (default 3)."""
    if not isinstance(study, Study):
        study = Study.from_toml(study)
    device_of(device)  # a device that is not here: one error before anything is written
    say = log_line or (lambda _line: None)
    root = Path(out if out is not None else study.run.get("dir", f"runs/{study.name}"))
    seeds = study.compare.get("seeds", 3) if seeds is None else seeds
    chosen = study.arms(None if arms is None else list(arms))
    every = study.arms()
    index, count = shard_of
    if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
        raise StudyError(f"--shard {index}/{count}: need 0 <= i < n")
    if seeds == "auto" and count > 1:
        raise StudyError("--seeds auto decides after each look: run it without --shard")
    task = study.build_task()
    study.load_data(task)
    preflight(task, every)
    fingerprint = study.fingerprint()
    root.mkdir(parents=True, exist_ok=True)
    layout = Layout(root)
    ledger = Ledger(
        layout.ledger,
        {
            "fingerprint": fingerprint,
            "sections": study.section_hashes(),
            "data": task.data().digest(),
            "study": study.to_dict(),
        },
    )
    runner = Runner(study, root, device, study.reference, fingerprint)
    threads = int(study.train.get("threads", 1))
    fork = bool(study.compare.get("fork", True))
    say(question(study, every, seeds))

    plan = looks(int(study.compare.get("max_seeds", 10))) if seeds == "auto" else [int(seeds)]
    level = 1 - ALPHA / len(plan) if seeds == "auto" else LEVEL
    report: dict[str, Any] | None = None
    stop = ""
    for look, n in enumerate(plan, 1):
        todo = shard(chains(study, chosen, range(n), fork), index, count)
        _run_with_progress(runner, todo, ledger, jobs, threads, say, progress)
        records = ledger.records()
        have = {(r["arm"], r["seed"]) for r in records}
        missing = [(a.name, s) for a in every for s in range(n) if (a.name, s) not in have]
        if missing:
            say(
                f"{len(have)} of {len(every) * n} runs are in {layout.ledger}; the report is "
                "written when the others are ("
                + (
                    "run without --arms to train them"
                    if arms
                    else "let the other shards finish, or run the same command again"
                )
                + ")"
            )
            return None
        last = seeds == "auto" and look == len(plan)
        report = build_report(
            study,
            every,
            records,
            list(range(n)),
            level,
            *([f"--seeds auto stopped at [compare] max_seeds = {n}: raise it"] if last else []),
            root=root,
        )
        undecided = [
            c["arm"]
            for c in report["comparisons"]
            if c["verdict"] == "inconclusive" and c["question"] == "test"
        ]
        if seeds != "auto":
            break
        if not undecided:
            stop = f"stopped at look {look} ({n} seeds): every verdict is decided"
            break
        stop = (
            f"stopped at the last look ({n} seeds, max_seeds): "
            f"{', '.join(undecided)} still inconclusive"
            if look == len(plan)
            else ""
        )
        if look < len(plan):
            say(f"look {look} ({n} seeds): {', '.join(undecided)} inconclusive; adding seeds")
    assert report is not None
    if seeds == "auto":
        report["sequential"] = {
            "looks": plan,
            "level": level,
            "rule": (
                f"Bonferroni over {len(plan)} planned looks: each look's intervals are "
                f"{100 * level:.2f}% so the whole sequence keeps a {100 * (1 - ALPHA):.0f}% "
                "guarantee"
            ),
            "stopped": stop,
        }
    from .render import write_outputs

    write_outputs(root, report)
    say(report["verdict"]["sentence"])
    say(f"report: {root / 'compare.md'}  figure: {root / 'compare.png'}")
    return report


def report_folder(root: str | os.PathLike, log_line: Callable[[str], None] | None = print) -> dict:
    """Rewrite compare.json/.md/.png of a study folder from its ledger alone (the study
    as its header recorded it; nothing is trained or imported)."""
    path = Path(root) / "runs.jsonl"
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        header = json.loads(first)
        saved = header["study"]
        study = Study(
            **{k: saved.get(k, {}) for k in ("model", "data", "task", "train", "compare")},
            dendrites=saved.get("dendrites", {}),
            name=saved.get("name", "study"),
            source=Path(saved["source"]) if saved.get("source") else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(
            f"{path}: the study cannot be rebuilt from its ledger ({exc}); run perforate "
            "compare on the study file instead"
        ) from exc
    records = Ledger(path, {"fingerprint": header.get("fingerprint")}).records()
    arms = study.arms()
    ref = {int(r["seed"]) for r in records if r["arm"] == study.reference}
    seeds = sorted(
        s
        for s in ref
        if all(any(r["arm"] == a.name and int(r["seed"]) == s for r in records) for a in arms)
    )
    if not seeds:
        raise StudyError(f"{path}: no seed has a finished run of every arm yet")
    report = build_report(study, arms, records, seeds, root=Path(root))
    from .render import write_outputs

    write_outputs(Path(root), report)
    if log_line is not None:
        log_line(report["verdict"]["sentence"])
        log_line(f"report: {Path(root) / 'compare.md'}  (seeds {seeds})")
    return report


def _run_with_progress(runner, todo, ledger, jobs, threads, say, progress) -> None:
    done = ledger.done()
    total = sum(1 for c in todo for a in c.arms if (a.name, c.seed) not in done)
    if total == 0:
        return
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="run", desc="compare", dynamic_ncols=True)
        except ModuleNotFoundError:  # pragma: no cover - tqdm is in the bench extra
            bar = None
    finished = [0]

    def on_record(r: dict[str, Any]) -> None:
        finished[0] += 1
        line = (
            f"[{finished[0]:>3}/{total}] {r['arm']:<16} seed {r['seed']}: val {r['val']:.4g}  "
            f"test {r['test']:.4g}  params {r['params']:,}  dendrites {r['dendrites']}  "
            f"{r['epochs']} epochs  {r['seconds']:.1f} s"
            + (f"  (forked at epoch {r['forked_at']})" if r.get("forked_at") is not None else "")
        )
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            say(line)

    try:
        run_chains(runner, todo, jobs, threads, on_record)
    finally:
        if bar is not None:
            bar.close()


def question(study: Study, arms: Sequence[Arm], seeds: int | str, level: float = LEVEL) -> str:
    """The question the study answers, stated before it runs."""
    task_metric = study.task.get("metric", "accuracy")
    metric = (
        task_metric if isinstance(task_metric, str) else getattr(task_metric, "__name__", "metric")
    )
    n = 3 if seeds == "auto" else int(seeds)
    if seeds == "auto":
        level = 1 - ALPHA / len(looks(int(study.compare.get("max_seeds", 10))))
    others = [a.name for a in arms if a.name != study.reference and not a.width]
    ladder = [str(a.width) for a in arms if a.width]
    ladder += [f"{a.name}: at {a.matches}'s parameters" for a in arms if a.matches]
    t = stats.detectable(n, 1.0, level)
    head = (
        f"Question: on {metric} ({study.direction}), does any of {', '.join(others)} beat "
        f"{study.reference} by more than {study.rope:g} (the rope)"
        + (
            f", and how do they compare with the width ladder ({', '.join(ladder)}) at equal "
            "parameters"
            if ladder
            else ""
        )
        + f"? Paired over {'3 or more (auto)' if seeds == 'auto' else n} seeds"
    )
    if n < 3:
        return head + f"; {n} seed(s) cannot decide a verdict: use 3 or more (5 to publish)."
    tail = (
        f"so a verdict of 'equivalent' needs that sd below {study.rope / t:.3g}."
        if study.rope > 0
        else "and with rope 0 'equivalent' cannot be concluded: set [compare] rope to the "
        "smallest difference you care about."
    )
    return head + (
        f"; with {n} seeds the {100 * level:.4g}% interval's half-width is {t:.2f} x the sd "
        f"of the per-seed differences, {tail}"
    )


# --- the report -----------------------------------------------------------------------------


def _by_seed(records: Sequence[dict[str, Any]], arm: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[key]) for r in records if r["arm"] == arm}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def build_report(
    study: Study,
    arms: Sequence[Arm],
    records: Sequence[dict[str, Any]],
    seeds: Sequence[int],
    level: float = LEVEL,
    more_seeds: str = "more seeds (--seeds auto, or a larger --seeds) narrow it",
    root: Path | None = None,
) -> dict[str, Any]:
    """Everything `compare.json` holds, from the ledger's records alone. Wall-clock
    values are kept under "timing" (they differ between machines and runs)."""
    seed_set = set(seeds)
    records = [r for r in records if int(r["seed"]) in seed_set]
    direction, rope, reference = study.direction, study.rope, study.reference
    names = [a.name for a in arms]
    grows = {a.name: a.grows for a in arms}
    rows = []
    timing_rows = []
    for arm in arms:
        runs = sorted((r for r in records if r["arm"] == arm.name), key=lambda r: r["seed"])
        val_m, val_sd = _mean_sd([r["val"] for r in runs])
        test_m, test_sd = _mean_sd([r["test"] for r in runs])
        rows.append(
            {
                "name": arm.name,
                "help": arm.help,
                "grows": arm.grows,
                "width": runs[0]["width"] if runs else arm.width,
                "val_mean": val_m,
                "val_sd": val_sd,
                "test_mean": test_m,
                "test_sd": test_sd,
                "params_mean": float(np.mean([r["params"] for r in runs])) if runs else math.nan,
                "dendrites_kept": sum(1 for r in runs if r["dendrites"] > 0),
                "epochs_mean": float(np.mean([r["epochs"] for r in runs])) if runs else math.nan,
                "runs": [
                    {
                        k: r[k]
                        for k in (
                            "seed",
                            "val",
                            "test",
                            "params",
                            "base_params",
                            "dendrite_params",
                            "dendrites",
                            "epochs",
                            "cycles",
                            "end",
                            "forked_at",
                            "model",
                        )
                    }
                    | {"first_epoch_best": bool(r.get("first_epoch_best", False))}
                    for r in runs
                ],
            }
        )
        timing_rows.append(
            {
                "name": arm.name,
                "seconds_mean": float(np.mean([r["seconds"] for r in runs])) if runs else math.nan,
                "runs": [
                    {"seed": r["seed"], "seconds": r["seconds"], "own_seconds": r["own_seconds"]}
                    for r in runs
                ],
            }
        )

    # Against the reference, on the test split: the methods (the ladder's widths answer
    # the equal-parameter question below, and would only widen Holm's family here).
    others = [n for n in names if n != reference and not n.startswith("ladder@")]
    ref_test = _by_seed(records, reference, "test")
    vs_ref = [
        stats.paired(_by_seed(records, n, "test"), ref_test, direction, level) for n in others
    ]
    comparisons = judge_family(others, reference, "test", vs_ref, rope)

    # Against the width ladder at equal parameters: the plain model at every width it was
    # trained at (a `wider` arm is one more point, at the matched arm's parameters).
    ladder_names = [
        a.name
        for a in arms
        if a.name == "plain" or a.name.startswith("ladder@") or a.matches is not None
    ]
    if len(ladder_names) >= 2:
        points = {
            s: [
                (float(r["params"]), float(r["test"]))
                for r in records
                if r["arm"] in ladder_names and int(r["seed"]) == s
            ]
            for s in seeds
        }
        off_ladder = [n for n in names if n not in ladder_names]
        eq = []
        for n in off_ladder:
            arm_runs = {int(r["seed"]): r for r in records if r["arm"] == n}
            at = {s: stats.interpolate(points[s], float(r["params"])) for s, r in arm_runs.items()}
            eq.append(stats.paired(_by_seed(records, n, "test"), at, direction, level))
        comparisons += judge_family(off_ladder, "ladder", "equal_params", eq, rope)

    # At equal wall time against the reference (timing: machine-dependent).
    ref_curves = {int(r["seed"]): r["curve"] for r in records if r["arm"] == reference}
    eq_time = []
    for n in others:
        arm_runs = {int(r["seed"]): r for r in records if r["arm"] == n}
        at = {
            s: stats.at_time(ref_curves[s], float(r["seconds"]), direction)
            for s, r in arm_runs.items()
            if s in ref_curves
        }
        eq_time.append(stats.paired(_by_seed(records, n, "test"), at, direction, level))
    time_comparisons = judge_family(others, reference, "equal_time", eq_time, rope)

    winner = _winner(rows, direction)
    best_run = _best_run(rows, winner, direction)
    w = next(r for r in rows if r["name"] == winner)
    winner_text = (
        f"On this model and data, {winner} is the better tool: best mean validation "
        f"{w['val_mean']:.4g}, test {w['test_mean']:.4g} (sd {_fmt(w['test_sd'])}) over "
        f"{len(w['runs'])} seeds, {w['params_mean']:,.0f} parameters"
    )
    if rope == 0:  # no number of seeds makes an interval fit inside a rope of 0
        more_seeds += "; and set [compare] rope (0 now) to the smallest difference you care about"
    verdict = study_verdict(
        comparisons, grows, winner, winner_text, reference, more_seeds
    ).to_dict()
    kept = [
        f"{r['name']} kept dendrites in {r['dendrites_kept']} of {len(r['runs'])} runs"
        for r in rows
        if r["grows"]
    ]
    if kept:  # a dendrite arm that never kept one is the plain network: say so
        verdict["sentence"] += f" ({'; '.join(kept)}.)"
    verdict.update(winner_seed=best_run["seed"], winner_model=best_run["model"])
    at_base = {  # the model as the factory gives it (LoRA adds its adapters)
        a.name
        for a in arms
        if a.width is None and a.matches is None and not a.adapt.startswith("lora")
    }
    report_checks = checks(rows, reference, root, at_base)
    verdict = with_checks(verdict, report_checks)
    plain = next((t for t in timing_rows if t["name"] in ("plain", "head")), None)
    unit = plain["seconds_mean"] if plain else math.nan
    total_actual = sum(r["own_seconds"] for r in records)
    total_scratch = sum(r["seconds"] for r in records)
    for t in timing_rows:
        t["cost"] = t["seconds_mean"] / unit if unit and not math.isnan(unit) else math.nan
    return {
        "version": REPORT_VERSION,
        "study": study.to_dict(),
        "question": question(study, arms, len(seeds), level),
        "metric": study.task.get("metric", "accuracy")
        if isinstance(study.task.get("metric", "accuracy"), str)
        else "custom",
        "direction": direction,
        "rope": rope,
        "reference": reference,
        "seeds": list(seeds),
        "level": level,
        "arms": rows,
        "comparisons": [c.to_dict() for c in comparisons],
        "checks": report_checks,
        "verdict": verdict,
        "sequential": None,
        "timing": {
            "arms": timing_rows,
            "comparisons": [c.to_dict() for c in time_comparisons],
            "study_seconds": total_actual,
            "study_seconds_unforked": total_scratch,
            "study_plain_units": total_actual / unit if unit else math.nan,
            "study_plain_units_unforked": total_scratch / unit if unit else math.nan,
        },
    }


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "0" if abs(x) < 1e-9 else f"{x:.3g}"  # float noise of equal scores reads as 0


def _winner(rows: Sequence[dict[str, Any]], direction: str) -> str:
    """The arm with the best mean validation score (fewer parameters break ties)."""
    sign = 1 if direction == "maximize" else -1
    scored = [r for r in rows if not math.isnan(r["val_mean"])]
    return max(scored, key=lambda r: (sign * r["val_mean"], -r["params_mean"]))["name"]


def _best_run(rows: Sequence[dict[str, Any]], arm: str, direction: str) -> dict[str, Any]:
    sign = 1 if direction == "maximize" else -1
    runs = next(r for r in rows if r["name"] == arm)["runs"]
    return max(runs, key=lambda r: (sign * r["val"], -r["seed"]))


def checks(
    rows: Sequence[dict[str, Any]],
    reference: str,
    root: Path | None = None,
    at_base: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Did the arms do what they claim? Shown in the report beside the verdict."""
    out = []
    if root is not None:
        gone = [
            x["model"]
            for r in rows
            for x in r["runs"]
            if x.get("model") and not (root / x["model"]).is_file()
        ]
        out.append(
            _check(
                "model files present",
                "all",
                not gone,
                "every run's model file is in the folder"
                if not gone
                else f"{len(gone)} missing ({', '.join(gone[:3])}): delete their records from "
                "runs.jsonl (or the folder) to train them again",
            )
        )
    seeds = {r["name"]: [x["seed"] for x in r["runs"]] for r in rows}
    ref_seeds = seeds.get(reference, [])
    for r in rows:
        name, runs = r["name"], r["runs"]
        if seeds[name] != ref_seeds:
            out.append(_check("paired seeds", name, False, f"seeds {seeds[name]} vs {ref_seeds}"))
        if r["grows"]:
            k = r["dendrites_kept"]
            out.append(
                _check(
                    "dendrites installed",
                    name,
                    k > 0,
                    f"kept dendrites in {k} of {len(runs)} runs"
                    + ("" if k else ": every run ended as the plain network"),
                )
            )
        else:
            extra = [x["seed"] for x in runs if x["dendrite_params"] != 0]
            out.append(
                _check(
                    "no dendrite parameters",
                    name,
                    not extra,
                    "none" if not extra else f"dendrite parameters in seeds {extra}",
                )
            )
        first = [x["seed"] for x in runs if x.get("first_epoch_best")]
        if first and len(first) * 2 >= len(runs):
            out.append(
                _check(
                    "direction",
                    name,
                    False,
                    f"the first epoch's score stayed best in seeds {first} of {len(runs)} "
                    "runs, as when a loss is maximized (or an accuracy minimized): check "
                    "[task] direction, and that the metric compares outputs and targets of "
                    "the same shape",
                )
            )
        capped = [x["seed"] for x in runs if x["end"] == "max_epochs"]
        out.append(
            _check(
                "ended by its own rule",
                name,
                not capped,
                "all runs"
                if not capped
                else f"seeds {capped} hit max_epochs: raise [train] max_epochs",
            )
        )
    base = [r for r in rows if r["name"] in ("plain", reference)]
    if base:
        same = (
            (lambda r: r["name"] in at_base)
            if at_base is not None
            else (lambda r: r["width"] == base[0]["width"])
        )
        sizes = {x["base_params"] for r in rows if same(r) for x in r["runs"]}
        out.append(
            _check(
                "same base model",
                "all",
                len(sizes) <= 1,
                f"base parameters {sorted(sizes)} across the arms at the factory's width",
            )
        )
    return out


def _check(name: str, arm: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "arm": arm, "ok": bool(ok), "detail": detail}


def comparisons_of(report: dict[str, Any], question: str) -> list[dict[str, Any]]:
    pool = report["comparisons"] + report["timing"]["comparisons"]
    return [c for c in pool if c["question"] == question]


__all__ = ["Comparison", "build_report", "compare", "looks", "question"]
