"""A small PB training that checkpoints every epoch; run by test_resume.py as a process.

    python resume_worker.py OUT_DIR

Resumes from OUT_DIR/ckpt.safetensors when it exists. Prints "start EPOCH PHASE" at the
start of every epoch (flushed) so the parent can kill it mid-epoch.
"""

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import perforate
from perforate.experiments.datasets import digits

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
out = Path(sys.argv[1])
ckpt = out / "ckpt.safetensors"
data = digits()


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 10)
    )


def factory(params):
    return torch.optim.Adam(params, lr=1e-2)


def scheduler(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.9)


config = perforate.DendriteConfig(
    patience=2,
    dendrite_patience=2,
    switch_mode="patience",
    dendrite_max_epochs=3,
    max_dendrites=2,
    max_retries=1,
    max_epochs=40,
)
model = build()
if ckpt.exists():
    ctl = perforate.Perforator.resume(
        ckpt, model, optimizer=factory, scheduler=scheduler, checkpoint_path=ckpt
    )
else:
    torch.manual_seed(1)
    ctl = perforate.Perforator(
        model, config, optimizer=factory, scheduler=scheduler, seed=3, checkpoint_path=ckpt
    )
while not ctl.done:
    print(f"start {ctl.epoch + 1} {ctl.phase.value}", flush=True)
    model.train()
    for idx in torch.randperm(len(data.y_train)).split(32):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        ctl.optimizer.step()
        time.sleep(0.004)  # long enough epochs for the parent to kill one mid-way
    model.eval()
    with torch.no_grad():
        val = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    ctl.end_epoch(val)
history = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ctl.history]
(out / "history.json").write_text(json.dumps(history))
perforate.save(model, out / "final.safetensors")
print("finished", flush=True)
