"""Files across devices (issue 24): what a CPU-only machine can check.

A file written on a GPU differs from one written on a CPU in one way only: safetensors
stores no device (it copies GPU tensors to the host as it writes), so the tensors are the
same, and a training checkpoint then also holds the CUDA RNG states. So: files carry no
device, a checkpoint holding CUDA RNG states resumes on a CPU exactly as one without them,
and a checkpoint without them resumes on a "GPU" (torch.cuda mocked) with CUDA generators
seeded from the checkpoint. The real devices are benchmarks/gpu_check.py's job.
"""

from __future__ import annotations

import copy
import json
import logging
import struct

import pytest
import torch
from torch import nn

import perforate
from perforate import DendriteConfig, DendriticLayer, Perforator, files, training_state
from perforate.errors import CheckpointError
from perforate.kinds import kind_of

CFG = DendriteConfig(switch_mode="fixed", fixed_neuron_epochs=1, fixed_dendrite_epochs=2)


def build() -> nn.Module:
    torch.manual_seed(0)
    # Dropout draws from the global RNG: a resume that restored it wrongly would diverge.
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(12, 2)
    )


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def train(model, ctl, epochs, data_seed):
    gen = torch.Generator().manual_seed(data_seed)
    for i in range(epochs):
        for _ in range(2):
            x, t = torch.randn(8, 1, 4, 4, generator=gen), torch.randn(8, 2, generator=gen)
            ctl.optimizer.zero_grad()
            nn.functional.mse_loss(model(x), t).backward()
            ctl.optimizer.step()
        ctl.end_epoch(0.5 + 0.1 * i)


def fake_gpu_states(devices: int):
    """What torch.cuda.get_rng_state_all returns: one CPU uint8 tensor per device."""
    return [torch.arange(16, dtype=torch.uint8) + i for i in range(devices)]


@pytest.fixture
def cpu_run(tmp_path):
    """A run two epochs in (inside a dendrite phase), checkpointed on this CPU."""
    model = build()
    ctl = Perforator(model, CFG, optimizer=adam, seed=3)
    train(model, ctl, 2, data_seed=1)
    assert ctl.phase.value == "dendrite"
    return ctl, ctl.save_checkpoint(tmp_path / "cpu.safetensors")


def _raw_header(path) -> dict:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def test_files_carry_no_device(tmp_path, cpu_run):
    ctl, ckpt = cpu_run
    model_file = tmp_path / "m.safetensors"
    ctl.finish()
    perforate.save(ctl.model, model_file)
    for path in (ckpt, model_file):
        raw = _raw_header(path)
        meta = raw.pop("__metadata__")
        # Per tensor: dtype, shape and offsets only; nothing in the JSON names a device.
        assert all(set(entry) == {"dtype", "shape", "data_offsets"} for entry in raw.values())
        assert not any(word in meta["perforate"] for word in ('"cpu"', "cuda", "device"))
        _, tensors = files.read(path)
        assert tensors and {t.device.type for t in tensors.values()} == {"cpu"}
        _, placed = files.read(path, device="cpu")
        assert all(torch.equal(placed[k], tensors[k]) for k in tensors)


def _continue_from(path, data_seed=2):
    model = build()
    ctl = Perforator.resume(path, model, optimizer=adam)
    train(model, ctl, 3, data_seed)
    return model, ctl


def test_e104_a_checkpoint_with_cuda_rng_states_resumes_on_a_cpu_as_one_without(
    tmp_path, cpu_run, monkeypatch, caplog
):
    ctl, cpu_path = cpu_run
    rng = torch.get_rng_state()
    with monkeypatch.context() as m:  # the same moment, saved "on a machine with 2 GPUs"
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "get_rng_state_all", lambda: fake_gpu_states(2))
        gpu_path = ctl.save_checkpoint(tmp_path / "gpu.safetensors")
    assert torch.equal(torch.get_rng_state(), rng)
    saved = training_state.load(gpu_path)["rng"]["cuda"]
    assert [t.tolist() for t in saved] == [t.tolist() for t in fake_gpu_states(2)]

    reference, _ = _continue_from(cpu_path)
    with caplog.at_level(logging.INFO, logger="perforate.training_state"):
        model, resumed = _continue_from(gpu_path)
    assert "CUDA RNG states of 2 device(s); CUDA is not available here" in caplog.text
    a, b = reference.state_dict(), model.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.dendrites_kept > 0  # the run went on through an install


def test_e104_a_cpu_checkpoint_resumed_on_a_gpu_seeds_cuda_from_the_checkpoint(
    tmp_path, cpu_run, monkeypatch, caplog
):
    ctl, first = cpu_run
    train(ctl.model, ctl, 1, data_seed=4)
    second = ctl.save_checkpoint(tmp_path / "later.safetensors")
    models = [build() for _ in range(3)]  # torch.manual_seed seeds CUDA too: before mocking
    seeds, restored = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds.append)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: restored.append(a))
    with caplog.at_level(logging.INFO, logger="perforate.training_state"):
        for path, model in zip((first, first, second), models, strict=True):
            Perforator.resume(path, model, optimizer=adam)
    assert "CUDA generators start fresh, seeded from the checkpoint" in caplog.text
    assert restored == []
    # The same file gives the same CUDA seed (a repeatable resume); another file another.
    assert len(seeds) == 3 and seeds[0] == seeds[1] != seeds[2]


def test_e104_cuda_rng_states_restore_on_as_many_devices_as_both_sides_have(
    tmp_path, cpu_run, monkeypatch, caplog
):
    ctl, _ = cpu_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake_gpu_states(2))
    path = ctl.save_checkpoint(tmp_path / "two.safetensors")
    model = build()
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, i: restored.append((t, i)))
    with caplog.at_level(logging.INFO, logger="perforate.training_state"):
        Perforator.resume(path, model, optimizer=adam)
    assert len(restored) == 1 and restored[0][1] == 0
    assert torch.equal(restored[0][0], fake_gpu_states(1)[0])
    assert "CUDA RNG states of 2 device(s) and 1 are here" in caplog.text


def test_e104_a_malformed_cuda_rng_state_is_refused_before_anything_changes(tmp_path, cpu_run):
    _, path = cpu_run
    state = training_state.load(path)
    state["rng"]["cuda"] = [torch.zeros(4)]  # float, not a generator state
    bad = training_state.save(tmp_path / "bad.safetensors", state)
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="malformed RNG state"):
        Perforator.resume(bad, model, optimizer=adam)
    rng = torch.get_rng_state()  # (building the controller drew from it: read it now)
    with pytest.raises(CheckpointError, match="1-d uint8"):
        training_state.set_process_rng_state(state["rng"])
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_model_file_loads_into_a_model_of_another_dtype_on_its_own_terms(tmp_path, cpu_run):
    # The loader copies each stored tensor into the model's own (device, dtype), as it
    # does for a file written on a GPU and a model on a CPU: nothing is replaced.
    ctl, _ = cpu_run
    ctl.finish()
    path = tmp_path / "m.safetensors"
    perforate.save(ctl.model, path)
    target = build().double()
    perforate.load(target, path)
    x = torch.randn(5, 1, 4, 4)
    ctl.model.eval(), target.eval()
    with torch.no_grad():
        want = ctl.model(x).double()
        got = target(x.double())
    assert next(target.parameters()).dtype == torch.float64
    # float32 weights computed in float64: equal to float32 rounding, not bit for bit.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _OtherDeviceGenerator(torch.Generator):
    """A CPU generator that reports device cpu:0, which compares unequal to a tensor's
    "cpu": the only way to take the cross-device draw on a machine without a GPU."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu", 0)


@pytest.mark.parametrize("base", [nn.Linear(5, 3), nn.Conv2d(2, 3, 3)], ids=["linear", "conv"])
def test_e105_candidates_drawn_for_another_device_equal_the_direct_draw(base):
    # On a GPU the controller's CPU generator cannot fill a CUDA tensor (PyTorch refuses);
    # the draw is made on the generator's device and copied, giving the same values.
    direct = DendriticLayer(base, kind_of(base), DendriteConfig(cascade=True))
    other = DendriticLayer(copy.deepcopy(base), kind_of(base), DendriteConfig(cascade=True))
    for layer in (direct, other):  # one installed slot, so the pool has a cascade
        layer.start_dendrite_phase(candidates=2, generator=torch.Generator().manual_seed(1))
        layer.install(torch.zeros(layer.neurons, dtype=torch.long))
    direct.start_dendrite_phase(candidates=3, generator=torch.Generator().manual_seed(2))
    gen = _OtherDeviceGenerator()
    gen.manual_seed(2)
    assert gen.device != torch.empty(0).device
    other.start_dendrite_phase(candidates=3, generator=gen)
    drawn = dict(other.candidates.named_parameters())
    assert sorted(drawn) == ["bank.bias", "bank.weight", "cascade"]
    for name, value in direct.candidates.named_parameters():
        assert torch.equal(drawn[name], value), name
