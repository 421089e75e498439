"""A Lightning run under strategy="ddp" on 2 CPU processes (gloo); launched by
tests/test_lightning.py. Lightning starts the second process by running this file again.
Each process writes its final weights, phase history and dendrite counts to OUT/rank<r>.

usage: python tests/lightning_ddp_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import perforate
from perforate.experiments.datasets import digits
from perforate.integrations.lightning import PerforateCallback


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        # sync_dist: under DDP every process reports the same score (a no-op alone).
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    data = digits()
    train = DataLoader(TensorDataset(data.x_train[:512], data.y_train[:512]), batch_size=32)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=256)
    config = perforate.DendriteConfig(
        switch_mode="fixed", fixed_neuron_epochs=2, fixed_dendrite_epochs=2, max_cycles=2
    )
    callback = PerforateCallback(config, monitor="val_acc", seed=0)
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=8,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        callbacks=[callback],
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train, val)
    rank = trainer.global_rank
    ctl = callback.controller
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    summary = {
        "events": [e.value for e in callback.events],
        "dendrites": ctl.dendrites_kept,
        "world_size": ctl.world_size,
        "done": ctl.done,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
