"""The one job loop: the runs of a study, grouped in chains, over shards and workers.

A job is (arm, seed). Per seed, the arms that share their first neuron phase form a chain
(`arms.Arm.prefix_key`): its first arm runs from scratch and leaves a fork point, the
others start from it. Chains are the unit of work: `--shard i/n` takes every n-th chain
from the i-th (any launcher; the processes share the output folder and its ledger), and
`--jobs N` runs N local worker processes (one torch thread each on the CPU, one GPU each
where there are several). Finished runs are in the ledger and are skipped; a killed run
continues from its own checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .arms import Arm
from .ledger import Ledger
from .runs import ForkPoint, RunSpec, TrainingError, matched_width, train_run
from .study import Study
from .task import Task, device_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chain:
    """Arms of one seed that share a first neuron phase; the first one runs it."""

    key: str
    seed: int
    arms: tuple[Arm, ...]

    @property
    def name(self) -> str:
        return f"{self.key}/seed{self.seed}"


def chains(study: Study, arms: Sequence[Arm], seeds: Iterable[int], fork: bool) -> list[Chain]:
    """The study's chains in a fixed order (seed, then the arms' order in the study)."""
    base = study.base_config().to_dict()
    out: list[Chain] = []
    for seed in seeds:
        groups: dict[str, list[Arm]] = {}
        home: dict[str, str] = {}  # arm name -> its group
        for arm in arms:
            key = arm.prefix_key(base) if fork else f"{arm.prefix_key(base)}-{arm.name}"
            groups.setdefault(key, []).append(arm)
            home[arm.name] = key
        for members in groups.values():
            members.sort(key=lambda a: not a.ends_first)  # stable: the plain-like arm first
        # An arm that matches another's parameters runs after it, in its chain (so shards
        # and workers never run it first); alone when that arm is not run here (--arms).
        for arm in arms:
            if arm.matches in home and len(groups[home[arm.name]]) == 1:
                groups.pop(home[arm.name])
                groups[home[arm.matches]].append(arm)
        for key, members in groups.items():
            out.append(Chain(key, seed, tuple(members)))
    return out


def shard(items: Sequence[Chain], index: int, count: int) -> list[Chain]:
    return list(items[index::count])


@dataclass(frozen=True)
class Layout:
    """Where a study folder keeps what."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "runs.jsonl"

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.root / "work" / arm / f"seed{seed}"

    def model(self, arm: str, seed: int) -> Path:
        return self.root / "models" / arm / f"seed{seed}.safetensors"

    def lock(self, chain: Chain) -> Any:
        """An open file whose flock marks the chain as being run."""
        folder = self.root / "work" / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f"{chain.key}-seed{chain.seed}.lock", "a")

    def fork(self, chain: Chain) -> ForkPoint:
        folder = self.root / "work" / "forks" / chain.key / f"seed{chain.seed}"
        folder.mkdir(parents=True, exist_ok=True)
        return ForkPoint(folder / "fork.safetensors", folder / "fork.json")


@dataclass(frozen=True)
class Runner:
    """What every worker needs to run chains of one study."""

    study: Study
    root: Path
    device: str
    reference: str
    fingerprint: str

    def run_chain(
        self,
        chain: Chain,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        task: Task | None = None,
        device: torch.device | None = None,
    ) -> list[dict[str, Any]]:
        """Run what is missing of one chain; append each record to the ledger. A chain
        another process is running (the same command started twice) is skipped."""
        layout = Layout(self.root)
        lock = layout.lock(chain)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.warning("%s is being run by another process; skipped here", chain.name)
            return []
        try:
            return self._run_chain(layout, chain, on_record, task, device)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _run_chain(
        self,
        layout: Layout,
        chain: Chain,
        on_record: Callable[[dict[str, Any]], None] | None,
        task: Task | None,
        device: torch.device | None,
    ) -> list[dict[str, Any]]:
        ledger = Ledger(layout.ledger, {"fingerprint": self.fingerprint})
        done = ledger.done()
        todo = [a for a in chain.arms if (a.name, chain.seed) not in done]
        if not todo:
            return []
        task = task if task is not None else self.study.build_task()
        device = device if device is not None else device_of(self.device)
        base = self.study.base_config().to_dict()
        point = layout.fork(chain) if len(chain.arms) > 1 else None
        track = any(a.name == self.reference for a in chain.arms)
        records: list[dict[str, Any]] = []
        for i, arm in enumerate(chain.arms):
            if (arm.name, chain.seed) in done:
                continue
            first = i == 0
            if arm.matches is not None:  # its width follows the matched arm's run
                arm = self._matched(arm, chain.seed, task, ledger, records)
                first = True  # a model of its own: from scratch, no fork either way
            spec = RunSpec(
                arm=arm,
                seed=chain.seed,
                config=arm.config(base),
                train=self.study.train,
                device=device,
                track_test=track,
            )
            fork = None if first or point is None or not point.ready else point
            record = train_run(
                spec,
                task,
                layout.run_dir(arm.name, chain.seed),
                fork=fork,
                make_fork=point if i == 0 and len(chain.arms) > 1 else None,
                model_path=layout.model(arm.name, chain.seed),
            )
            record.update(
                fingerprint=self.fingerprint,
                width=arm.width if arm.width is not None else task.base_width,
                grows=arm.grows,
                chain=chain.key,
                device=str(device),
                model=str(layout.model(arm.name, chain.seed).relative_to(self.root)),
            )
            if ledger.append(record):
                records.append(record)
                if on_record is not None:
                    on_record(record)
            shutil.rmtree(layout.run_dir(arm.name, chain.seed), ignore_errors=True)
        if point is not None and all((a.name, chain.seed) in ledger.done() for a in chain.arms):
            shutil.rmtree(point.checkpoint.parent, ignore_errors=True)
        return records

    @staticmethod
    def _matched(
        arm: Arm, seed: int, task: Task, ledger: Ledger, fresh: Sequence[dict[str, Any]]
    ) -> Arm:
        """`arm` at the width whose parameter count is nearest the matched arm's run of
        this seed (recorded in this chain just now, or earlier in the ledger)."""

        def found(runs: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
            return next((r for r in runs if (r["arm"], r["seed"]) == (arm.matches, seed)), None)

        target = found(fresh) or found(ledger.records())  # the ledger only when needed
        if target is None:
            raise TrainingError(
                f"arm {arm.name}, seed {seed}: it matches the parameters of arm "
                f"{arm.matches}, which has no run of seed {seed} yet: run {arm.matches} "
                "first (or the study without --arms)"
            )
        width = matched_width(task, int(target["params"]))
        return replace(arm, width=width)


# --- worker processes ---------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(runner: Runner, threads: int, counter: Any) -> None:
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = device_of(runner.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        device = torch.device("cuda", index % torch.cuda.device_count())
    _WORKER.update(runner=runner, device=device, task=None)


def _work(chain: Chain) -> list[dict[str, Any]]:
    runner: Runner = _WORKER["runner"]
    if _WORKER["task"] is None:
        _WORKER["task"] = runner.study.build_task()
    return runner.run_chain(chain, task=_WORKER["task"], device=_WORKER["device"])


def worker_count(jobs: int, chains_: int, device: torch.device, threads: int = 1) -> int:
    """`jobs`, capped: a worker without a chain only costs its start-up (a torch import),
    and on the CPU workers beyond the cores only slow each other (`--jobs 300` once
    started 300 processes that filled the memory of a 2-core machine)."""
    wanted = jobs
    jobs = min(jobs, chains_)
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        jobs = min(jobs, max(1, cores // max(1, threads)))
    if jobs < wanted:
        log.warning(
            "--jobs %d: running %d worker(s) (%d chain(s) to run, on %s)",
            wanted,
            jobs,
            chains_,
            device.type,
        )
    return max(1, jobs)


def run_chains(
    runner: Runner,
    todo: Sequence[Chain],
    jobs: int,
    threads: int,
    on_record: Callable[[dict[str, Any]], None],
) -> None:
    """Run `todo` in this process (jobs=1) or in `jobs` spawned workers (no more than
    there are chains to run, or cores to run them on when the device is the CPU)."""
    if not todo:
        return
    jobs = worker_count(jobs, len(todo), device_of(runner.device), threads)
    if jobs <= 1:
        torch.set_num_threads(threads)
        task = runner.study.build_task()
        device = device_of(runner.device)
        for chain in todo:
            runner.run_chain(chain, on_record=on_record, task=task, device=device)
        return
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(runner, threads, counter)) as pool:
        for records in pool.imap_unordered(_work, todo):
            for record in records:
                on_record(record)


def describe(chains_: Sequence[Chain]) -> str:
    return json.dumps([{"chain": c.name, "arms": [a.name for a in c.arms]} for c in chains_])
