"""to_plain's copy is for inference only: what it leaves trainable and what it does not."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import perforate
from helpers import grow


def test_to_plain_freezes_what_was_wrapped_and_leaves_the_rest(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 2))
    perforate.add_dendrites(model, perforate.DendriteConfig(exclude=("3",)))
    grow(perforate.dendritic_layers(model)["0"], 1, gen)  # "2" stays without dendrites
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags["2.base.weight"] and flags["0.base.weight"]
    plain = perforate.to_plain(model.eval(), torch.randn(2, 4, generator=gen))
    assert type(plain[2]) is nn.Linear and type(plain[3]) is nn.Linear
    # Wrapped layers come back in inference: every parameter frozen, grown or not.
    assert not any(p.requires_grad for p in plain[0].parameters())
    assert not any(p.requires_grad for p in plain[2].parameters())
    assert all(p.requires_grad for p in plain[3].parameters())  # never wrapped: as it was
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # untouched


def test_no_target_message_names_the_filters_it_used():
    model = nn.Sequential(nn.Linear(2, 2), nn.Conv1d(2, 2, 1))
    with pytest.raises(perforate.NoTargetLayersError) as info:
        perforate.add_dendrites(model, perforate.DendriteConfig(include=("nothing*",)))
    assert "names matching ['nothing*']" in str(info.value)
    with pytest.raises(perforate.NoTargetLayersError) as info:
        perforate.add_dendrites(model, perforate.DendriteConfig(layer_types=("Conv2d",)))
    text = str(info.value)
    assert "names matching" not in text and "excluding" not in text
    assert "the model has Conv1d layers: add 'Conv1d' to layer_types" in text


@pytest.mark.parametrize(("activation", "native"), [("relu", 1), ("gelu", 2)])
def test_an_encoder_layer_gets_its_own_fast_path_back_after_removal(activation, native):
    enc = nn.TransformerEncoderLayer(8, 2, 16, activation=activation, batch_first=True)
    assert enc.activation_relu_or_gelu == native
    perforate.add_dendrites(enc, perforate.DendriteConfig(pair_norms=False))
    assert enc.activation_relu_or_gelu == 0  # wrapped: no fused fast path around them
    perforate.remove_dendrites(enc)
    assert enc.activation_relu_or_gelu == native


def test_a_plain_copy_of_a_grown_encoder_layer_keeps_off_the_fast_path(gen):
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    perforate.add_dendrites(enc, perforate.DendriteConfig(pair_norms=False))
    grow(perforate.dendritic_layers(enc)["linear1"], 1, gen)
    enc.eval()
    x = torch.randn(2, 5, 8, generator=gen)
    plain = perforate.to_plain(enc, x)
    assert plain.activation_relu_or_gelu == 0
    with torch.no_grad():  # inference: where torch would take its fused path
        torch.testing.assert_close(plain(x), enc(x), rtol=0, atol=0)


def test_a_sequence_model_keeps_free_batch_and_length(gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    perforate.add_dendrites(model, perforate.DendriteConfig())
    grow(perforate.dendritic_layers(model)["0"], 2, gen)
    model.eval()
    plain = perforate.to_plain(model, torch.randn(2, 3, 6, generator=gen))
    for shape in ((2, 3, 6), (4, 7, 6), (1, 1, 6)):
        y = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            assert torch.equal(plain(y), model(y)), shape


def test_to_plain_needs_torch_export_with_auto_sizes(monkeypatch, gen):
    model = nn.Sequential(nn.Linear(2, 2))
    perforate.add_dendrites(model, perforate.DendriteConfig())
    monkeypatch.setattr(torch, "export", SimpleNamespace(Dim=SimpleNamespace()))
    with pytest.raises(NotImplementedError, match=r"torch >= 2\.6"):
        perforate.to_plain(model, torch.randn(1, 2))


def test_a_plain_copy_where_nothing_grew_gets_torchs_fast_path_back():
    enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    perforate.add_dendrites(enc, perforate.DendriteConfig(pair_norms=False))
    assert enc.activation_relu_or_gelu == 0
    plain = perforate.to_plain(enc.eval(), torch.randn(2, 3, 8))
    assert plain.activation_relu_or_gelu == 1  # relu: torch's own value
    assert enc.activation_relu_or_gelu == 0  # the original still wrapped


def test_only_an_encoder_holding_grown_layers_stops_nesting_tensors():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.wrapped = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.left = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1
            )
            self.head = nn.Linear(8, 2)

    model = Two()
    model.wrapped.use_nested_tensor = True
    assert model.left.use_nested_tensor
    cfg = perforate.DendriteConfig(include=("wrapped.*", "head"), pair_norms=False)
    perforate.add_dendrites(model, cfg)
    assert model.wrapped.use_nested_tensor is False
    assert model.left.use_nested_tensor is True  # nothing wrapped inside: untouched
    assert not hasattr(model.head, "use_nested_tensor")


class _Reused(nn.Module):
    """seq.0 -> seq.1 in a Sequential; `how` adds a second use of one of them."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.spare = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # never called
        self.how = how

    def forward(self, x):
        if self.how == "layer twice":
            return self.seq(x) + self.seq[0](x)
        if self.how == "layer alone":
            return self.seq[0](x)  # the norm is never called
        if self.how == "norm alone":
            return self.seq[1](x)  # the layer is never called
        h = self.seq[0](x)
        return self.seq[1](h) + h  # each called once, but the layer's output has two users


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("layer twice", "the forward calls seq.0 2 time(s) and seq.1 1 time(s); pairing needs"),
        ("other user", "seq.1 does not consume the output of seq.0 alone (it has another user)"),
        ("layer alone", "the forward calls seq.0 1 time(s) and seq.1 0 time(s); pairing needs"),
        ("norm alone", "the forward calls seq.0 0 time(s) and seq.1 1 time(s); pairing needs"),
    ],
)
def test_an_unpaired_sequential_pair_is_logged_with_the_reason(how, why, caplog):
    model = _Reused(how).eval()
    x = torch.randn(5, 4)
    before = model(x)
    with caplog.at_level(logging.INFO, logger="perforate.convert"):
        perforate.add_dendrites(model)
    assert torch.equal(model(x), before)  # what the forward computes is unchanged
    layers = perforate.dendritic_layers(model)
    assert layers["seq.0"].norm is None
    assert f"not pairing seq.0 with norm seq.1: {why}" in caplog.text
    # A Sequential the forward never calls: nothing in the trace says no, it pairs.
    assert layers["spare.0"].norm_path == "spare.1"
    assert "spare" not in caplog.text


def test_remove_dendrites_returns_the_model_and_an_odd_activation_has_no_fast_path():
    enc = nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh, batch_first=True)
    assert enc.activation_relu_or_gelu == 0
    perforate.add_dendrites(enc, perforate.DendriteConfig(pair_norms=False))
    assert perforate.remove_dendrites(enc) is enc
    assert enc.activation_relu_or_gelu == 0  # neither relu nor gelu: no fused path


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
        self.fc = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.norm(self.fc(self.seq(x)))


def test_an_untraceable_model_warns_naming_only_the_norms_left_unpaired():
    model = _Untraceable()
    with pytest.warns(perforate.PerforateWarning, match=r"were not paired") as rec:
        perforate.add_dendrites(model)
    text = str(rec[0].message)
    assert "(norm)" in text and "seq.1" not in text  # the Sequential's norm did pair
    assert perforate.dendritic_layers(model)["seq.0"].norm_path == "seq.1"


def test_add_and_remove_refuse_what_they_cannot_take(gen):
    with pytest.raises(TypeError, match="config must be a DendriteConfig, got dict"):
        perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)), {"patience": 3})
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        perforate.add_dendrites("model")
    model = perforate.add_dendrites(nn.Sequential(nn.Linear(2, 2)))
    perforate.dendritic_layers(model)["0"].start_dendrite_phase(generator=gen)
    with pytest.raises(perforate.PhaseError, match=r"layers \['0'\] are in a dendrite phase"):
        perforate.remove_dendrites(model)
    assert perforate.dendritic_layers(model)  # still wrapped


def test_nothing_left_to_wrap_after_skipping_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1, groups=4))
    with pytest.raises(perforate.NoTargetLayersError, match="every target layer was skipped"):
        perforate.add_dendrites(model, perforate.DendriteConfig(skip_unsupported=True))


def test_to_plain_refuses_an_example_that_misses_a_grown_layer(gen):
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x, use_b=False):
            return self.b(x) if use_b else self.a(x)

    model = perforate.add_dendrites(Branches())
    grow(model.b, 1, gen)
    with pytest.raises(ValueError, match=r"the example input never reached layers \['b'\]"):
        perforate.to_plain(model.eval(), torch.randn(1, 2))
    assert type(perforate.to_plain(model, torch.randn(1, 2), use_b=True).b) is not nn.Linear
