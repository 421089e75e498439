"""Conversion of real architectures without manual grouping: ResNet, a transformer."""

from __future__ import annotations

import torch
from torch import nn

import perforate
from perforate import DendriteConfig, Event, Perforator
from perforate.experiments import models


class EncoderBlock(nn.Module):
    """Pre-norm transformer block with explicit q/k/v projections (BERT-like)."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (
            f(h).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        att = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.blocks = nn.Sequential(EncoderBlock(), EncoderBlock())
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)  # its out_proj is internal
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        h = self.blocks(self.embed(tokens))
        h = h + self.mha(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def test_resnet_pairs_every_conv_with_its_batchnorm():
    torch.manual_seed(0)
    model = models.resnet18(width=8)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    y0 = model(x)
    perforate.add_dendrites(model)
    assert torch.equal(model(x), y0)
    layers = perforate.dendritic_layers(model)
    convs = [n for n, layer in layers.items() if layer.kind.name == "Conv2d"]
    assert len(convs) == 20 and all(layers[n].norm is not None for n in convs)
    assert layers["3.conv1"].norm_path == "3.bn1"  # found by tracing, not by a Sequential
    assert layers["5.downsample.0"].norm_path == "5.downsample.1"


def test_transformer_converts_and_trains_through_an_install():
    torch.manual_seed(0)
    model = TinyTransformer()
    tokens = torch.randint(0, 20, (8, 5))
    model.eval()
    y0 = model(tokens)
    config = DendriteConfig(
        patience=1,
        dendrite_patience=1,
        dendrite_max_epochs=1,
        improvement_abs=0.01,
        improvement_rel=0.0,
    )
    ctl = Perforator(model, config, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    model.eval()
    assert torch.equal(model(tokens), y0)
    names = set(ctl.layers)
    assert {"blocks.0.q", "blocks.0.fc1", "blocks.1.proj", "head"} <= names
    assert not any(n.startswith("mha") for n in names)  # MHA uses out_proj's weight directly
    model.train()
    events = []
    for score in (0.5, 0.5, 0.0):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens), torch.randint(0, 3, (8,))).backward()
        ctl.optimizer.step()
        events.append(ctl.end_epoch(score))
    assert events[-1] == Event.INSTALLED
    fc1 = ctl.layers["blocks.0.fc1"]
    assert fc1.slots == 1 and int(fc1.dendrite_count.sum()) == 64
    out = model(tokens)
    assert out.shape == (8, 3) and torch.isfinite(out).all()


def test_torch_transformer_encoder_never_skips_the_dendrites_in_inference(gen):
    """nn.TransformerEncoderLayer's eval fast path fuses linear1/linear2 from their
    weights; with dendrites it must not run (it would skip them), and it must come back
    when the dendrites are removed."""
    from helpers import grow

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model.eval()
    x = torch.randn(3, 5, 16, generator=gen)
    perforate.add_dendrites(model, DendriteConfig(pair_norms=False))
    layers = perforate.dendritic_layers(model)
    assert "layers.0.linear1" in layers and "layers.1.linear2" in layers
    for grown in layers.values():
        grow(grown, 1, gen)
    with torch.no_grad():  # where the fast path would run
        fast = model(x)
    slow = model(x)  # grad enabled: the layer-by-layer path
    assert torch.allclose(fast, slow.detach(), atol=1e-5)
    assert layers["layers.0.linear1"].weight is layers["layers.0.linear1"].base.weight
    assert all(m.activation_relu_or_gelu == 0 for m in model.layers)
    perforate.remove_dendrites(model)
    assert all(m.activation_relu_or_gelu == 1 for m in model.layers)  # relu: torch's value


def test_a_grown_encoder_takes_padded_batches_in_inference(gen):
    from helpers import grow

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2)  # nested tensors for padded batches by default
    perforate.add_dendrites(model, DendriteConfig(pair_norms=False))
    for grown in perforate.dendritic_layers(model).values():
        grow(grown, 1, gen)
    model.eval()
    x = torch.randn(3, 5, 16, generator=gen)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        fast = model(x, src_key_padding_mask=pad)
    slow = model(x, src_key_padding_mask=pad)
    keep = ~pad
    assert torch.allclose(fast[keep], slow.detach()[keep], atol=1e-5)
    assert model.use_nested_tensor is False
