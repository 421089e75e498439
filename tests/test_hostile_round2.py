"""Hostile inputs, round two: docs/errors.md rows 123 onward, one test each.

Each test is named `test_eNN_...` after its row (see test_hostile.py's
`test_every_row_has_its_test`).
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from torch import nn

import perforate


class _SeqAndDirect(nn.Module):
    """A Sequential(Linear, BatchNorm) whose Linear is also called on its own."""

    def __init__(self, norm_twice: bool = False) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.out = nn.Linear(16, 3)
        self.norm_twice = norm_twice
        with torch.no_grad():
            self.seq[1].weight.fill_(5.0)
            self.seq[1].running_mean.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = self.seq[1](x @ torch.ones(6, 8)) if self.norm_twice else self.seq[0](x)
        return self.out(torch.cat([self.seq(x), other], 1))


def test_e123_a_sequential_layer_or_norm_also_called_elsewhere_is_not_paired(caplog):
    x = torch.randn(64, 6)
    for norm_twice in (False, True):
        model = _SeqAndDirect(norm_twice).eval()
        before = model(x)
        with caplog.at_level(logging.INFO, logger="perforate.convert"):
            perforate.add_dendrites(model)
        layer = perforate.dendritic_layers(model)["seq.0"]
        assert layer.norm is None and isinstance(model.seq[1], nn.BatchNorm1d)
        # Same modules, same order of operations, one process: bit for bit.
        assert torch.equal(model(x), before)
        assert "not pairing seq.0 with norm seq.1" in caplog.text
        caplog.clear()
    # An ordinary Sequential still pairs: the norm moves into the wrapper.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    perforate.add_dendrites(plain)
    assert isinstance(plain[0].norm, nn.BatchNorm1d) and isinstance(plain[1], nn.Identity)


def _stats_after_penalty_steps(
    create_graph: bool, paused: bool = False, weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """Three steps of a gradient penalty (weight 0 without a graph, so the errors the
    candidates see are the same either way) in a dendrite phase; the pool's statistics.
    `paused`: the `autograd.grad` call inside `perforate.no_candidate_statistics()`."""
    torch.manual_seed(0)
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    layer = perforate.dendritic_layers(model)["0"]
    layer.start_dendrite_phase(generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(16, 3, generator=gen).requires_grad_(True)
        loss = model(x).pow(2).mean()
        with perforate.no_candidate_statistics() if paused else contextlib.nullcontext():
            (g,) = torch.autograd.grad(loss, x, create_graph=create_graph, retain_graph=True)
        (loss + weight * g.pow(2).sum() if create_graph else loss).backward()
    stats = layer.candidates.stats
    return {name: getattr(stats, name) for name in stats.FIELDS}


def test_e124_a_gradient_penalty_leaves_the_candidate_statistics_without_a_graph():
    with_graph = _stats_after_penalty_steps(True)
    for name, value in with_graph.items():
        assert value.grad_fn is None and not value.requires_grad, name
        assert torch.isfinite(value).all(), name
    # The statistics only see E = dL/dy of the loss's own backward passes; the penalty
    # adds to E in the last one, so compare with a run whose last backward is the loss's
    # alone only where the penalty cannot reach: the count (patterns folded) and the
    # candidates' own output moments (V does not depend on E).
    without = _stats_after_penalty_steps(False)
    for name in ("count", "mean_v", "m_vv"):
        assert torch.equal(with_graph[name], without[name]), name
    assert int(with_graph["count"]) == 2 * 3 * 16  # autograd.grad and backward both fold


def test_e124_no_candidate_statistics_keeps_a_penalty_pass_out_of_the_statistics():
    paused = _stats_after_penalty_steps(True, paused=True)
    assert int(paused["count"]) == 3 * 16  # the loss's backward alone
    for name, value in paused.items():
        assert value.grad_fn is None and torch.isfinite(value).all(), name
    # With the penalty weighted 0 the candidates see exactly what a run without any
    # penalty pass shows them (same ops, one process: bit for bit).
    zero = _stats_after_penalty_steps(True, paused=True, weight=0.0)
    plain = _stats_after_penalty_steps(False, paused=True)
    for name in zero:
        assert torch.equal(zero[name], plain[name]), name
    # The penalty reaches E only through the last backward: the error moments differ.
    assert not torch.equal(paused["m_ee"], zero["m_ee"])
    # The block ends even when its body raises: the loss's backward after it still folds.
    with pytest.raises(RuntimeError), perforate.no_candidate_statistics():
        raise RuntimeError("inside")
    assert int(_stats_after_penalty_steps(True)["count"]) == 2 * 3 * 16


class _ReadsOutFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.conv = nn.Conv2d(2, 4, kernel_size=3, stride=2)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)).view(-1, self.fc.out_features))


def test_e125_the_wrapped_layers_public_attributes_read_through():
    import copy
    import pickle

    model = _ReadsOutFeatures()
    x = torch.randn(5, 6)
    before = model(x)
    perforate.add_dendrites(model)
    assert (model.fc.in_features, model.fc.out_features) == (6, 8)
    conv = model.conv
    assert (conv.kernel_size, conv.stride, conv.in_channels) == ((3, 3), (2, 2), 2)
    assert torch.equal(model(x), before)
    # Private names stay the wrapper's (what pickling and torch probe with hasattr).
    assert not hasattr(model.fc, "_conv_forward") and hasattr(model.conv.base, "_conv_forward")
    with pytest.raises(AttributeError, match="DendriticLayer' object \\(wrapping Linear\\)"):
        model.fc.no_such_attribute  # noqa: B018
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert twin.fc.out_features == 8 and torch.equal(twin(x), before)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), before)


def _plain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _adam(params):
    return torch.optim.Adam(params, lr=0.05)


def test_e126_bad_seeds_and_scores_get_clear_errors_numpy_scores_count():
    import numpy as np

    for seed, match in (
        (2**64, "seed must lie in"),
        ("abc", "seed must be an integer or None, got str"),
        (1.5, "seed must be an integer or None, got float"),
        (True, "seed must be an integer or None, got bool"),
    ):
        model = _plain()
        with pytest.raises(perforate.ConfigError, match=match):
            perforate.Perforator(model, optimizer=_adam, seed=seed)
        assert not perforate.dendritic_layers(model)  # refused before wrapping
    # A numpy integer seeds exactly like the int it holds.
    draws = []
    for seed in (np.int64(7), 7):
        ctl = perforate.Perforator(_plain(), optimizer=_adam, seed=seed)
        draws.append(torch.rand(3, generator=ctl._generator))
    assert torch.equal(*draws)
    ctl = perforate.Perforator(_plain(), optimizer=_adam, seed=0)
    for score in (np.array([0.5]), np.float32(0.5), np.array(0.5), torch.tensor([0.5])):
        assert ctl._checked_score(score) == 0.5
    for score, match in (
        (10**400, "too large for a float"),
        (np.array([0.5, 0.1]), "one number"),
        (np.array(["a"]), "real number"),
        (np.True_, "real number"),
    ):
        with pytest.raises(perforate.ScoreError, match=match):
            ctl._checked_score(score)
    with pytest.raises(perforate.ScoreError, match="too large for a float"):
        ctl.end_epoch(10**5000)
    assert ctl.epoch == 0


def test_e127_a_wrapped_layer_replaced_by_the_user_is_refused_before_anything_changes():
    model = _plain()
    ctl = perforate.Perforator(model, optimizer=_adam, seed=0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    ctl.optimizer.step()
    assert not ctl.end_step()
    ctl.end_epoch(1.0)
    model[2] = nn.Linear(4, 2)
    ctl.optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    ctl.optimizer.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    counters = (ctl.epoch, ctl.steps, ctl.phase)
    for call in (ctl.end_step, lambda: ctl.end_epoch(0.5)):
        with pytest.raises(perforate.PhaseError, match=r"'2' \(now Linear\) were replaced"):
            call()
        assert (ctl.epoch, ctl.steps, ctl.phase) == counters
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_e127_nested_layers_checked_at_every_step_by_their_links():
    """end_step checks each link from the model down to its layers (not a search by
    name): a layer replaced deep inside is refused, a container replaced by one that
    holds the same layers is not."""
    blocks = [nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Tanh(), nn.Linear(3, 3)))]
    model = nn.Sequential(*blocks, nn.Linear(3, 2))
    ctl = perforate.Perforator(model, optimizer=_adam, seed=0)
    model[0] = nn.Sequential(model[0][0], model[0][1])  # the same layers in a new container
    assert not ctl.end_step() and ctl.steps == 1
    model[0][1][1] = nn.Linear(3, 3)
    with pytest.raises(perforate.PhaseError, match=r"'0.1.1' \(now Linear\) were replaced"):
        ctl.end_step()
    assert ctl.steps == 1


def test_e135_hooks_registered_before_wrapping_are_named_in_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2))
    seen: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o))
    model[1].register_forward_pre_hook(lambda m, i: None)
    model[3].register_full_backward_hook(lambda m, gi, go: None)
    with pytest.warns(perforate.PerforateWarning) as caught:
        perforate.add_dendrites(model)
    text = str(caught[0].message)
    assert "0 (forward hook)" in text and "1 (forward pre hook)" in text
    assert "3 (backward hook)" in text and "register the hook on" in text
    # The hook stayed where it was registered: it sees the base's output.
    x = torch.randn(4, 5)
    model(x)
    assert torch.equal(seen[-1], model[0].base(x))
    # torch's own weight reparametrisation hooks are not the user's: no warning.
    with pytest.warns(FutureWarning):  # torch deprecates the old-style weight_norm
        old_style = nn.Sequential(nn.utils.weight_norm(nn.Linear(5, 6)), nn.ReLU(), nn.Linear(6, 2))
    perforate.add_dendrites(old_style)  # PerforateWarning is an error under pytest here
    perforate.add_dendrites(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)))


def test_e136_a_model_file_whose_saved_config_is_not_a_mapping_is_refused(tmp_path):
    from perforate import files
    from perforate.checkpoint import model_structure, state_tensors

    torch.manual_seed(0)
    source = perforate.add_dendrites(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)))
    for bad in ("patience=3", None, [1]):
        header, tensors = model_structure(source), state_tensors(source)
        header["config"] = bad
        path = tmp_path / f"m{type(bad).__name__}.safetensors"
        files.write(path, header, tensors)
        target = perforate.add_dendrites(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)))
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(perforate.CheckpointMismatchError, match="not a mapping of settings"):
            perforate.load(target, path)
        after = target.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # left as it was


def test_e143_to_plain_without_an_example_bytes_paths_and_a_paused_epoch():
    grown = perforate.add_dendrites(_plain())
    layer = perforate.dendritic_layers(grown)["0"]
    layer.start_dendrite_phase(generator=torch.Generator().manual_seed(0))
    layer.install(torch.tensor([0, 1, 2, 3]))  # candidate p = c of each neuron c
    layer.start_neuron_phase()
    with pytest.raises(TypeError, match=r"to_plain needs one example input .*to_plain\(model, x\)"):
        perforate.to_plain(grown)
    assert perforate.to_plain(grown, torch.randn(2, 3)) is not grown  # with one: works
    with pytest.raises(perforate.ConfigError, match=r"str or os.PathLike .* got bytes"):
        perforate.Perforator(_plain(), optimizer=_adam, checkpoint_path=b"ckpt.safetensors")
    # An epoch whose backward passes all ran inside no_candidate_statistics(): the error
    # names the block among the causes.
    model = _plain()
    ctl = perforate.Perforator(model, perforate.DendriteConfig(patience=1), optimizer=_adam, seed=0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    while ctl.phase != perforate.Phase.DENDRITE:
        ctl.optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        ctl.optimizer.step()
        ctl.end_epoch(1.0)
    ctl.optimizer.zero_grad()
    with perforate.no_candidate_statistics():
        nn.functional.mse_loss(model(x), y).backward()
    ctl.optimizer.step()
    with pytest.raises(perforate.PhaseError, match=r"inside perforate\.no_candidate_statistics"):
        ctl.end_epoch(1.0)
