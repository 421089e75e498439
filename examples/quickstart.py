"""Perforated Backpropagation added to an ordinary training loop (digits, an MLP).

Run: .venv/bin/python examples/quickstart.py
"""

import torch
from torch import nn

import perforate
from perforate.experiments.datasets import digits

torch.manual_seed(0)
data = digits()
model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))

# The added lines: settings, the controller (it wraps the model), end_step and end_epoch.
config = perforate.DendriteConfig(patience=5, max_dendrites=2)
ctl = perforate.Perforator(model, config, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))

while not ctl.done:
    model.train()
    for idx in torch.randperm(len(data.y_train)).split(64):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        ctl.optimizer.step()
        if ctl.end_step():  # the candidates have settled: evaluate now
            break
    model.eval()
    with torch.no_grad():
        val = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    event = ctl.end_epoch(val)
    if event != perforate.Event.CONTINUE:
        print(f"epoch {ctl.epoch:3d}  val {val:.4f}  {event.value}")

print(f"best validation accuracy {ctl.best_score:.4f} after {ctl.epoch} epochs")
print(perforate.parameter_report(model))
perforate.save(model, "runs/quickstart/model.safetensors")
