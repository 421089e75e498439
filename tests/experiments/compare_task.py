"""A tiny task for the compare tests, written beside a study file as a user would.

`write_study(folder, ...)` puts `mymodel.py`, `mydata.py` and `study.toml` in `folder`:
a classification MLP with a width argument on a 3-class table, or a regression with MSE.
Runs take a fraction of a second, so a whole study takes seconds.
"""

from __future__ import annotations

from pathlib import Path

MODEL = """
from torch import nn


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
"""

DATA = """
import torch


def table(rows: int = 240, kind: str = "classes", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 10, generator=g)
    if kind == "classes":
        w = torch.randn(10, 3, generator=g)
        y = (x @ w + 0.5 * torch.randn(rows, 3, generator=g)).argmax(1)
    else:
        w = torch.randn(10, generator=g)
        y = torch.tanh(x @ w) + 0.1 * torch.randn(rows, generator=g)
    a, b = rows // 2, 3 * rows // 4
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}
"""

STUDY = """
[model]
factory = "mymodel:mlp"
kwargs = {{ inputs = 10, hidden = 4, outputs = {outputs} }}
width = "hidden"

[data]
factory = "mydata:table"
kwargs = {{ kind = "{kind}" }}

[task]
{task}

[train]
lr = 0.02
batch_size = 32
max_epochs = 40

[compare]
seeds = 3
{compare}

[dendrites]
patience = 3
cycle_patience = 2
dendrite_check_steps = 4
max_cycles = 2
"""


def write_study(folder: Path, kind: str = "classes", compare: str = "", task: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodel.py").write_text(MODEL)
    (folder / "mydata.py").write_text(DATA)
    if kind == "regression" and not task:
        task = 'loss = "mse"\nmetric = "mse"'
    outputs = 3 if kind == "classes" else 1
    path = folder / "study.toml"
    path.write_text(STUDY.format(outputs=outputs, kind=kind, task=task, compare=compare))
    return path
