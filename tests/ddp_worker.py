"""PB under DistributedDataParallel (gloo, CPU), launched by test_distributed.py."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import perforate
from perforate.experiments.datasets import digits

GLOBAL_BATCH = 64


def main(rank: int, world: int, init_file: str, out: str, mode: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    distributed = world > 1
    if distributed:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=30),
        )
    data = digits()
    x_train, y_train = data.x_train.double(), data.y_train
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    config = perforate.DendriteConfig(
        patience=2,
        dendrite_patience=1,
        switch_mode="patience",
        dendrite_max_epochs=2,
        max_dendrites=2,
        max_retries=0,
        max_epochs=20,
        improvement_rel=0.0,
        improvement_abs=0.0,
    )
    wrapper = (lambda m: DistributedDataParallel(m)) if distributed else None
    ctl = perforate.Perforator(
        model, config, seed=0, wrapper=wrapper, optimizer=lambda p: torch.optim.SGD(p, lr=0.2)
    )
    order = torch.Generator().manual_seed(123)  # the same global batches everywhere
    local = GLOBAL_BATCH // world
    while not ctl.done:
        perm = torch.randperm(len(y_train), generator=order)
        for step, start in enumerate(range(0, len(perm) - GLOBAL_BATCH + 1, GLOBAL_BATCH)):
            idx = perm[start + rank * local : start + (rank + 1) * local]
            if mode == "crash" and rank == 1 and ctl.epoch == 2 and step == 3:
                raise RuntimeError("rank 1 fails on purpose")
            ctl.optimizer.zero_grad()
            nn.functional.cross_entropy(ctl.wrapped(x_train[idx]), y_train[idx]).backward()
            ctl.optimizer.step()
        with torch.no_grad():
            val = (model(data.x_val.double()).argmax(1) == data.y_val).double().mean().item()
        ctl.end_epoch(val)
    history = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ctl.history]
    (out_dir / f"history{rank}.json").write_text(json.dumps(history))
    perforate.save(model, out_dir / f"model{rank}.safetensors")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    r, w, f, o, m = sys.argv[1:6]
    main(int(r), int(w), f, o, m)
