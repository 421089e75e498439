"""Training checkpoints in process: exact continuation, refusals, the .prev fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate
import perforate.training_state
from perforate import DendriteConfig, Perforator


def build(hidden=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def factory(params):
    return torch.optim.Adam(params, lr=0.05)


CFG = DendriteConfig(
    patience=1,
    dendrite_patience=1,
    switch_mode="patience",
    dendrite_max_epochs=2,
    max_retries=1,
    improvement_abs=0.01,
    improvement_rel=0.0,
)
SCORES = [0.1, 0.2, 0.2, 0.0, 0.0, 0.3, 0.3, 0.0, 0.0, 0.31, 0.31]


def epoch(model, ctl, gen):
    x = torch.randn(16, 3, generator=gen)
    t = torch.randn(16, 2, generator=gen)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), t).backward()
    ctl.optimizer.step()


@pytest.mark.parametrize("stop_after", [2, 4, 6])  # in a neuron phase, a dendrite phase, after
def test_save_anywhere_and_resume_gives_the_same_run(tmp_path, stop_after):
    def run(model, ctl, scores, gen):
        for s in scores:
            epoch(model, ctl, gen)
            ctl.end_epoch(s)

    ref_model = build()
    ref = Perforator(ref_model, CFG, optimizer=factory, seed=5)
    run(ref_model, ref, SCORES, torch.Generator().manual_seed(1))

    model = build()
    ctl = Perforator(model, CFG, optimizer=factory, seed=5)
    gen = torch.Generator().manual_seed(1)
    run(model, ctl, SCORES[:stop_after], gen)
    path = ctl.save_checkpoint(tmp_path / "ckpt.safetensors")
    gen_state = gen.get_state()
    del model, ctl
    model = build(hidden=4)
    ctl = Perforator.resume(path, model, optimizer=factory)
    gen = torch.Generator()
    gen.set_state(gen_state)
    run(model, ctl, SCORES[stop_after:], gen)

    strip = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ctl.history]
    assert strip == [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in ref.history]
    a, b = ref_model.state_dict(), model.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ctl.done == ref.done and ctl.best_score == ref.best_score


def _saved(tmp_path):
    model = build()
    ctl = Perforator(model, CFG, optimizer=factory, checkpoint_path=tmp_path / "c.safetensors")
    gen = torch.Generator().manual_seed(1)
    for s in SCORES[:5]:
        epoch(model, ctl, gen)
        ctl.end_epoch(s)
    return tmp_path / "c.safetensors"


def test_checkpoint_every_epoch_keeps_the_previous_one(tmp_path):
    path = _saved(tmp_path)
    prev = path.with_name(path.name + ".prev")
    assert path.is_file() and prev.is_file()
    assert perforate.training_state.load(path)["controller"]["epoch"] == 5
    assert perforate.training_state.load(prev)["controller"]["epoch"] == 4


def test_corrupted_checkpoint_falls_back_to_prev_and_says_so(tmp_path, caplog):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(perforate.CheckpointError, match="truncated, corrupted"):
        perforate.training_state.load(path)
    ctl = Perforator.resume(path, build(), optimizer=factory)
    assert ctl.epoch == 4 and ctl.resumed_from == path.with_name(path.name + ".prev")
    assert "resuming from" in caplog.text and "one checkpoint older" in caplog.text
    assert ctl.checkpoint_path == path  # keeps checkpointing where the run did
    path.with_name(path.name + ".prev").write_bytes(b"junk")
    with pytest.raises(perforate.CheckpointError, match="neither checkpoint can be read"):
        Perforator.resume(path, build(), optimizer=factory)


def test_resume_into_another_architecture_lists_the_differences(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(perforate.CheckpointMismatchError, match=r"'0\.base\.weight': shape"):
        Perforator.resume(path, build(hidden=5), optimizer=factory)


def test_model_file_and_training_file_are_not_confused(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(perforate.CheckpointError, match=r"Perforator\.resume"):
        perforate.load(build(), path)
    model = perforate.add_dendrites(build())
    perforate.save(model, tmp_path / "m.safetensors")
    with pytest.raises(perforate.CheckpointError, match=r"perforate\.load"):
        Perforator.resume(tmp_path / "m.safetensors", build(), optimizer=factory)


def test_pickled_file_is_never_unpickled(tmp_path):
    torch.save({"x": 1}, tmp_path / "evil.safetensors")
    with pytest.raises(perforate.CheckpointError, match="never unpickles"):
        Perforator.resume(tmp_path / "evil.safetensors", build(), optimizer=factory)


class _CallableState(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler whose state holds a function, as some user schedulers do."""

    def __init__(self, optimizer):
        self.rule = lambda epoch: 0.9**epoch
        super().__init__(optimizer)

    def get_lr(self):
        return [base * self.rule(self.last_epoch) for base in self.base_lrs]


def test_scheduler_whose_state_holds_a_callable_cannot_be_checkpointed(tmp_path):
    model = build()
    ctl = Perforator(model, CFG, optimizer=factory, scheduler=_CallableState)
    epoch(model, ctl, torch.Generator().manual_seed(0))
    ctl.end_epoch(0.1)
    with pytest.raises(perforate.CheckpointError, match="cannot store a function"):
        ctl.save_checkpoint(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_lambda_lr_leaves_its_lambda_out_and_resumes_with_the_same_lr(tmp_path):
    def sched(o):
        return torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e)

    model = build()
    ctl = Perforator(model, CFG.replace(patience=5), optimizer=factory, scheduler=sched)
    gen = torch.Generator().manual_seed(0)
    for s in (0.1, 0.2):
        epoch(model, ctl, gen)
        ctl.end_epoch(s)
    path = ctl.save_checkpoint(tmp_path / "ok.safetensors")
    resumed = Perforator.resume(path, build(), optimizer=factory, scheduler=sched)
    assert resumed.optimizer.param_groups[0]["lr"] == ctl.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.param_groups[0]["lr"] == 0.05 * 0.25
