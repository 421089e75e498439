"""A run that checkpoints every epoch, for test_kill.py to SIGKILL at random moments.

    python kill_worker.py CKPT MAX_EPOCHS

Resumes from CKPT (or its .prev) when one exists. Prints "saved N" once the checkpoint of
epoch N is on disk, and "done N" at the end.
"""

import sys
from pathlib import Path

import torch
from torch import nn

import perforate

torch.set_num_threads(1)
ckpt, max_epochs = Path(sys.argv[1]), int(sys.argv[2])


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def factory(params):
    return torch.optim.Adam(params, lr=1e-3)


config = perforate.DendriteConfig(
    patience=2,
    dendrite_patience=1,
    switch_mode="patience",
    dendrite_max_epochs=2,
    max_dendrites=3,
    max_epochs=max_epochs,
    improvement_rel=0.0,
)
model = build()
if ckpt.exists() or perforate.training_state.previous(ckpt).exists():
    ctl = perforate.Perforator.resume(ckpt, model, optimizer=factory)
else:
    ctl = perforate.Perforator(model, config, optimizer=factory, checkpoint_path=ckpt, seed=0)
x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
while not ctl.done:
    for idx in torch.randperm(256).split(64):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        ctl.optimizer.step()
    ctl.end_epoch((ctl.epoch // 3) / 100)  # rises in steps: phases end, cycles are accepted
    print(f"saved {ctl.epoch}", flush=True)
print(f"done {ctl.epoch}", flush=True)
