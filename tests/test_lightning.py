"""The Lightning callback on a real Trainer (CPU)."""

from __future__ import annotations

import functools

import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import perforate  # noqa: E402
from lightning_ddp_worker import Classifier  # noqa: E402  (the DDP worker's module)
from perforate.experiments.datasets import digits  # noqa: E402
from perforate.integrations.lightning import PerforateCallback  # noqa: E402


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


def _loaders():
    data = digits()
    n = 512  # a slice keeps each epoch short; no shuffling, so both runs see one order
    train = DataLoader(TensorDataset(data.x_train[:n], data.y_train[:n]), batch_size=64)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=512)
    return train, val


def _trainer(epochs, callback, **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        **kw,
    )


FIXED = dict(switch_mode="fixed", fixed_neuron_epochs=2, fixed_dendrite_epochs=2, max_cycles=3)


def _fit(epochs, ckpt_path=None, module=None):
    pl.seed_everything(0, verbose=False)
    module = module if module is not None else Classifier()
    callback = PerforateCallback(perforate.DendriteConfig(**FIXED), monitor="val_acc", seed=0)
    trainer = _trainer(epochs, callback)
    train, val = _loaders()
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, callback, trainer


@functools.cache
def _uninterrupted():
    return _fit(7)


@pytest.mark.parametrize(("stop", "phase"), [(1, "neuron"), (3, "dendrite"), (5, "neuron")])
def test_trainer_checkpoint_resumes_bit_for_bit_in_every_phase(tmp_path, stop, phase):
    full, full_cb, _ = _uninterrupted()
    _, part_cb, part_trainer = _fit(stop)
    assert part_cb.controller.phase.value == phase
    path = tmp_path / "mid.ckpt"
    part_trainer.save_checkpoint(path)

    pl.seed_everything(123, verbose=False)  # the resumed run must not depend on it
    torch.manual_seed(99)
    resumed, resumed_cb, _ = _fit(7, ckpt_path=str(path), module=Classifier())
    want, got = full.state_dict(), resumed.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r.score for r in resumed_cb.controller.history] == [
        r.score for r in full_cb.controller.history
    ]
    assert resumed_cb.controller.dendrites_kept == full_cb.controller.dendrites_kept > 0
    assert resumed.strict_loading  # only relaxed while Lightning restored the weights


def test_e95_mode_and_config_direction_must_agree():
    assert PerforateCallback().config.direction == "minimize"  # val_loss, min
    assert PerforateCallback(monitor="val_acc", mode="max").config.direction == "maximize"
    assert PerforateCallback(perforate.DendriteConfig(), monitor="val_acc").mode == "max"
    with pytest.raises(perforate.ConfigError, match="'val_loss' is a loss but the config"):
        PerforateCallback(perforate.DendriteConfig())  # the default direction maximizes
    with pytest.raises(perforate.ConfigError, match="mode='min' but the config"):
        PerforateCallback(perforate.DendriteConfig(), monitor="val_loss", mode="min")
    with pytest.raises(perforate.ConfigError, match="mode must be"):
        PerforateCallback(mode="minimum")


def test_phase_cycle_and_dendrites_reach_the_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0, verbose=False)
    callback = PerforateCallback(perforate.DendriteConfig(**FIXED), monitor="val_acc", seed=0)
    trainer = _trainer(5, callback, logger=CSVLogger(tmp_path, name="run"))
    train, val = _loaders()
    trainer.fit(Classifier(), train, val)
    logged = trainer.logged_metrics
    assert {"perforate/phase", "perforate/cycle", "perforate/dendrites"} <= set(logged)
    assert float(logged["perforate/dendrites"]) == callback.controller.dendrites_kept
    csv = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    assert "perforate/dendrites" in csv.splitlines()[0]


def test_e95_a_checkpoint_without_the_callbacks_state_is_refused(tmp_path):
    pl.seed_everything(0, verbose=False)
    plain = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    train, val = _loaders()
    plain.fit(Classifier(), train, val)
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(perforate.ConfigError, match="holds no PerforateCallback state"):
        _fit(2, ckpt_path=str(tmp_path / "plain.ckpt"))


def test_e95_a_metric_that_was_never_logged_is_a_config_error():
    pl.seed_everything(0, verbose=False)
    callback = PerforateCallback(perforate.DendriteConfig(**FIXED), monitor="val_f1", seed=0)
    train, val = _loaders()
    with pytest.raises(perforate.ConfigError, match=r"monitors 'val_f1'.*logged: \['val_acc'\]"):
        _trainer(1, callback).fit(Classifier(), train, val)


def test_under_ddp_on_two_cpu_processes_every_rank_grows_the_same_model(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    worker = Path(__file__).parent / "lightning_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert summaries[0] == summaries[1]  # the same decisions on both ranks
    assert summaries[0]["world_size"] == 2 and "installed" in summaries[0]["events"]
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_process_under_strategy_ddp_gets_a_fresh_wrapper_at_each_phase():
    # One process still runs inside DistributedDataParallel, whose old wrapper would
    # expect gradients for the weights a dendrite phase freezes.
    pl.seed_everything(0, verbose=False)
    callback = PerforateCallback(perforate.DendriteConfig(**FIXED), monitor="val_acc", seed=0)
    train, val = _loaders()
    trainer = _trainer(5, callback, strategy="ddp", devices=1)
    trainer.fit(Classifier(), train, val)
    assert perforate.Event.INSTALLED in callback.events
