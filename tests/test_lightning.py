"""The Lightning callback on a real Trainer (CPU)."""

from __future__ import annotations

import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import perforate  # noqa: E402
from perforate.experiments.datasets import digits  # noqa: E402
from perforate.integrations.lightning import PerforateCallback  # noqa: E402


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
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_callback_drives_pb_and_stops_the_trainer():
    torch.manual_seed(0)
    data = digits()
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=512)
    # The default (budget) schedule: Lightning does not call end_step, so each dendrite
    # epoch is judged at its end.
    config = perforate.DendriteConfig(patience=2, max_dendrites=1, max_retries=0)
    callback = PerforateCallback(config, monitor="val_acc", seed=0)
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=60,
        callbacks=[callback],
        accelerator="cpu",
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train, val)
    ctl = callback.controller
    assert perforate.Event.INSTALLED in callback.events
    assert ctl.done and trainer.current_epoch < 60  # the controller stopped the Trainer
    assert isinstance(module.net[0], perforate.DendriticLayer)
    # Lightning's optimizer is the controller's, rebuilt from configure_optimizers.
    assert trainer.optimizers[0] is ctl.optimizer
    final = trainer.validate(module, val, verbose=False)[0]["val_acc"]
    assert final == pytest.approx(ctl.best_score, abs=1e-6)
