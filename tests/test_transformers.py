"""The Hugging Face Trainer callback on a tiny BERT built from a config (no download)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import perforate  # noqa: E402
from perforate.integrations.transformers import attach  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Label = whether token 1 appears before token 2: needs attention, not a bag."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 30, (n, 8), generator=g)
        pos = torch.randperm(8, generator=g)[:2]
        for i in range(n):
            a, b = torch.randperm(8, generator=g)[:2]
            self.ids[i, a], self.ids[i, b] = 1, 2
        self.labels = (self.ids == 1).float().argmax(1) < (self.ids == 2).float().argmax(1)
        del pos

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": int(self.labels[i])}


def test_trainer_callback_installs_dendrites_in_attention_and_mlp(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=40,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(256, 0), eval_dataset=Tokens(128, 1)
    )
    config = perforate.DendriteConfig(
        direction="minimize",
        pair_norms=False,
        patience=2,
        dendrite_patience=1,
        switch_mode="patience",
        dendrite_max_epochs=2,
        max_dendrites=1,
        max_retries=0,
        improvement_rel=0.05,
    )
    callback = attach(trainer, config, metric="eval_loss", seed=0)
    layers = perforate.dendritic_layers(model)
    assert "bert.encoder.layer.0.attention.self.query" in layers
    assert "bert.encoder.layer.0.intermediate.dense" in layers
    trainer.train()
    ctl = callback.controller
    assert perforate.Event.INSTALLED in callback.events
    assert ctl.done and trainer.state.epoch < 40
    query = layers["bert.encoder.layer.0.attention.self.query"]
    assert query.slots == 1 or ctl.history[-1].dendrites == 0  # kept only if it paid
    assert trainer.evaluate()["eval_loss"] == pytest.approx(ctl.best_score, rel=1e-5)
