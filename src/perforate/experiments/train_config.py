"""`perforate train FILE`: one run of one arm, from the same file format as a study.

    perforate train examples/digits_mlp.toml [--arm pb] [--device auto] [--resume]

The file is a study file (`docs/study_file.md`, `perforate.experiments.study`); `[compare]`
is not needed. The run is the engine's own (`runs.train_run`): the arm's settings laid over
`[dendrites]` (default arm `pb`, which takes `[dendrites]` as it is), seed `[train] seed`.
The run directory receives `results.json` (scores, parameters, the full history),
`model.safetensors` (the best model, `perforate.load`), `ckpt.safetensors` (the training
state after every epoch: `--resume` continues there) and `demo.png`; `perforate report
RUN_DIR` redraws the figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import perforate
from perforate import Event, Perforator, training_state
from perforate.files import atomic_write

from .arms import REGISTRY, Arm
from .imports import import_object
from .report import plot_runs, run_title
from .runs import RunSpec, preflight, train_run
from .study import SCHEMA, Study, StudyError, schema_markdown
from .task import device_of

ExperimentError = StudyError  # the name `perforate train` errors had before 0.4

__all__ = [
    "SCHEMA",
    "ExperimentError",
    "import_factory",
    "read_experiment",
    "run_experiment",
    "schema_markdown",
]


def read_experiment(path: str | os.PathLike) -> Study:
    """The validated file; `StudyError` names the file, the section and the key."""
    return Study.from_toml(path)


def import_factory(path: str, search: Sequence[str | os.PathLike] = ()) -> Callable[..., nn.Module]:
    """The model factory `path` names ("module:function"): a normal import first, then
    each folder of `search` (the file's folder, the current folder)."""
    factory = import_object(path, search, what="model factory")
    if not callable(factory):
        raise ExperimentError(f"model factory {path!r} is not callable")
    return factory


def progress_bar(name: str) -> Any:
    """A `tqdm.auto` bar over epochs (a widget in notebooks), or None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(desc=name, unit="epoch", dynamic_ncols=True)


def run_experiment(
    path: str | os.PathLike,
    resume: bool | str = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
    arm: str = "pb",
) -> dict[str, Any]:
    """Train as the file says. `resume=True` continues from the run's checkpoint and fails
    when there is none; `resume="if-present"` starts afresh when there is none; without
    either, an old checkpoint in the run directory is replaced."""
    study = read_experiment(path)
    if arm not in REGISTRY:
        raise ExperimentError(f"--arm {arm!r}: choose from {', '.join(REGISTRY)}")
    chosen: Arm = REGISTRY[arm]
    if chosen.matches is not None:  # its width follows another arm's runs in a study
        raise ExperimentError(
            f"--arm {arm} matches the parameters of {chosen.matches}'s runs, which only "
            f"`perforate compare` has; train {arm} with compare (or an arm of a fixed width)"
        )
    run_device = device_of(device)  # before anything in the run folder changes
    if chosen.adapt != "default" and not study.model.get("checkpoint"):
        raise ExperimentError(f"--arm {arm} adapts a trained model: set [model] checkpoint")
    train = study.train
    torch.set_num_threads(int(train.get("threads", torch.get_num_threads())))
    seed = int(train.get("seed", 0))
    run_dir = Path(study.run.get("dir", f"runs/{Path(path).stem}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt.safetensors"
    has_checkpoint = ckpt.is_file() or training_state.previous(ckpt).is_file()
    if resume is True and not has_checkpoint:
        raise ExperimentError(
            f"--resume: no checkpoint at {ckpt}; start the run without "
            "--resume, or use --resume-if-present"
        )
    task = study.build_task()
    study.load_data(task)
    preflight(task, [chosen])
    data_file = run_dir / "data.json"  # the digest of the data the run started on
    digest = task.data().digest()
    if has_checkpoint and resume and data_file.is_file():
        started_on = json.loads(data_file.read_text()).get("digest")
        if started_on != digest:  # a run is not continued on other data
            raise ExperimentError(
                f"--resume: the data differ from those {run_dir} started on (digest "
                f"{digest}, the run's {started_on}); give the factory the same data, or "
                "start the run afresh without --resume"
            )
    if has_checkpoint and not resume:
        log(f"starting afresh: the old checkpoint {ckpt} is replaced (--resume continues it)")
        for stale in (ckpt, training_state.previous(ckpt), run_dir / "epochs.json"):
            if stale.is_file():
                stale.unlink()
    if not (has_checkpoint and resume):
        atomic_write(data_file, json.dumps({"digest": digest}).encode())
    spec = RunSpec(
        arm=chosen,
        seed=seed,
        config=chosen.config(study.base_config().to_dict()),
        train=train,
        device=run_device,
    )
    bar = progress_bar(Path(path).stem) if log is print else None
    say = log if bar is None else bar.write  # a line printed beside the bar would glue to it

    def started(ctl: Perforator) -> None:
        if ctl.resumed_from is not None:
            say(f"resumed {ctl.resumed_from} at epoch {ctl.epoch}")

    def progress(ctl: Perforator, event: Event, val: float) -> None:
        line = (
            f"epoch {ctl.epoch:>4}  {ctl.history[-1].phase:<8} val {val:8.4g}  "
            f"params {perforate.parameter_report(ctl.model).total:>8,}  {event.value}"
        )
        if bar is None:
            log(line)
            return
        bar.update(1)
        bar.set_postfix(phase=ctl.history[-1].phase, val=f"{val:.4g}", dendrites=ctl.dendrites_kept)
        if event != Event.CONTINUE:  # decisions stay on screen; plain epochs only tick
            bar.write(line)

    try:
        record = train_run(
            spec,
            task,
            run_dir,
            model_path=run_dir / "model.safetensors",
            on_start=started,
            on_epoch=progress,
            keep_history=True,
        )
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line: an error after it starts a line of its own
    record.update(
        label=Path(path).stem,
        method=spec.config.method,
        dataset=task.data_name,
        device=str(spec.device),
    )
    atomic_write(run_dir / "results.json", json.dumps([record]).encode())
    plot_runs([record], run_dir / "demo.png", run_title(run_dir, [record]), [record["label"]])
    log(
        f"test {task.metric.name} {record['test']:.4g} at the best validation epoch; "
        f"{record['params']:,} parameters ({record['dendrite_params']:,} in dendrites)\n"
        f"results: {run_dir}"
    )
    return record
