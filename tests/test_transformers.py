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
    model = tiny_bert()
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


def tiny_bert(**overrides):
    cfg = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        **overrides,
    )
    return transformers.BertForSequenceClassification(cfg)


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def test_e96_metric_and_direction_come_from_the_training_arguments():
    from types import SimpleNamespace as Args

    from perforate.integrations.transformers import resolve_metric

    def args(name=None, greater=None):
        return Args(metric_for_best_model=name, greater_is_better=greater)

    name, cfg = resolve_metric(args(), None, None)
    assert (name, cfg.direction) == ("eval_loss", "minimize")
    name, cfg = resolve_metric(args("accuracy", True), None, None)
    assert (name, cfg.direction) == ("eval_accuracy", "maximize")
    name, cfg = resolve_metric(args(), None, "eval_f1")  # the Trainer's rule: not a loss
    assert (name, cfg.direction) == ("eval_f1", "maximize")
    name, cfg = resolve_metric(
        args("loss", False), perforate.DendriteConfig(direction="minimize"), None
    )
    assert name == "eval_loss"
    with pytest.raises(perforate.ConfigError, match="'eval_loss' is a loss but the config"):
        resolve_metric(args(), perforate.DendriteConfig(), None)
    assert "Conv1D" in resolve_metric(args(), None, None)[1].layer_types
    with pytest.raises(perforate.ConfigError, match="greater_is_better=True"):
        resolve_metric(args("accuracy", True), perforate.DendriteConfig(direction="minimize"), None)


def test_grown_model_round_trips_through_save_and_from_pretrained(tmp_path):
    from helpers import grow
    from perforate.integrations.transformers import from_pretrained, save_pretrained

    torch.manual_seed(0)
    model = tiny_bert()
    perforate.add_dendrites(model, perforate.DendriteConfig(pair_norms=False))
    gen = torch.Generator().manual_seed(3)
    for layer in perforate.dendritic_layers(model).values():
        grow(layer, 2, gen)
    model.eval()
    ids = torch.randint(3, 30, (4, 8), generator=gen)
    want = model(input_ids=ids).logits
    save_pretrained(model, tmp_path / "grown")
    torch.manual_seed(123)  # a different init underneath: every weight must come from disk
    loaded = from_pretrained(transformers.BertForSequenceClassification, tmp_path / "grown")
    assert torch.equal(loaded(input_ids=ids).logits, want)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(perforate.CheckpointError, match="perforate's `save_pretrained`"):
        model.save_pretrained(tmp_path / "hf")  # HF's own: no structure beside it
        from_pretrained(transformers.BertForSequenceClassification, tmp_path / "hf")


def test_a_head_tied_to_the_embeddings_is_left_alone_and_the_model_saves(tmp_path):
    from helpers import grow
    from perforate.integrations.transformers import from_pretrained, save_pretrained, tied_linears

    torch.manual_seed(0)
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert tied_linears(model) == ["lm_head"]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, eval_strategy="epoch"
    )
    trainer = transformers.Trainer(model=model, args=args, eval_dataset=[])
    callback = attach(trainer)
    assert callback.metric == "eval_loss" and callback.config.direction == "minimize"
    assert isinstance(model.lm_head, torch.nn.Linear)  # not wrapped: still tied
    assert model.lm_head.weight is model.transformer.wte.weight
    layers = perforate.dendritic_layers(model)  # GPT-2's transposed Linears (Conv1D)
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"} <= set(layers)
    gen = torch.Generator().manual_seed(1)
    for layer in layers.values():
        grow(layer, 2, gen)
    ids = torch.randint(0, 40, (2, 6))
    model.eval()
    want = model(input_ids=ids).logits
    save_pretrained(model, tmp_path / "gpt2")
    loaded = from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "gpt2")
    assert torch.equal(loaded(input_ids=ids).logits, want)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_a_conv1d_layer_with_dendrites_computes_as_the_same_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(5, 3)  # 3 inputs, 5 outputs, weight stored (3, 5)
    linear = torch.nn.Linear(3, 5)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    with pytest.raises(perforate.NoTargetLayersError, match="add 'Conv1D' to layer_types"):
        perforate.add_dendrites(torch.nn.Sequential(conv))  # not in the default kinds
    a = perforate.add_dendrites(
        torch.nn.Sequential(conv), perforate.DendriteConfig(layer_types=("Conv1D",))
    )[0]
    b = perforate.add_dendrites(torch.nn.Sequential(linear))[0]
    assert a.kind.name == "Conv1D" and a.neurons == 5 and a.kind.fan_in(a.base) == 3
    for layer in (a, b):
        layer.start_dendrite_phase(generator=torch.Generator().manual_seed(2))
        layer.install(torch.tensor([0, 1, -1, 2, 0]), output_weight=0.5)
    x = torch.randn(4, 7, 3)
    assert torch.allclose(a(x), b(x), atol=1e-6)
    assert a.parameter_counts() == b.parameter_counts()


def test_e96_save_pretrained_refuses_a_model_inside_a_dendrite_phase(tmp_path):
    from perforate.integrations.transformers import save_pretrained

    model = tiny_bert()
    perforate.add_dendrites(model, perforate.DendriteConfig(pair_norms=False))
    layer = next(iter(perforate.dendritic_layers(model).values()))
    layer.start_dendrite_phase()
    with pytest.raises(perforate.PhaseError, match="dendrite phase"):
        save_pretrained(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


FIXED = dict(
    direction="minimize",
    pair_norms=False,
    switch_mode="fixed",
    fixed_neuron_epochs=2,
    fixed_dendrite_epochs=2,
    max_cycles=3,
)


def _hf_trainer(tmp_path, name, epochs=7):
    torch.manual_seed(0)
    model = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        warmup_steps=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1)
    )


@pytest.mark.parametrize(("stop", "phase"), [(3, "dendrite"), (5, "neuron")])
def test_resume_from_a_trainer_checkpoint_is_bit_identical(tmp_path, stop, phase):
    full = _hf_trainer(tmp_path, "full")
    callback = attach(full, perforate.DendriteConfig(**FIXED), seed=0)
    full.train()
    assert perforate.Event.INSTALLED in callback.events
    checkpoint = tmp_path / "full" / f"checkpoint-{2 * stop}"  # 2 steps per epoch
    saved = perforate.training_state.load(checkpoint / "perforate_state.safetensors")
    assert saved["controller"]["phase"] == phase

    torch.manual_seed(99)  # the resumed run must not depend on the process's state
    resumed = _hf_trainer(tmp_path, "resumed")
    again = attach(
        resumed, perforate.DendriteConfig(**FIXED), seed=0, resume_from_checkpoint=checkpoint
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r.score for r in again.controller.history] == [
        r.score for r in callback.controller.history
    ]


def test_e96_resuming_without_telling_attach_is_refused(tmp_path):
    full = _hf_trainer(tmp_path, "full", epochs=2)
    attach(full, perforate.DendriteConfig(**FIXED), seed=0)
    full.train()
    other = _hf_trainer(tmp_path, "other", epochs=3)
    attach(other, perforate.DendriteConfig(**FIXED), seed=0)
    with pytest.raises(perforate.ConfigError, match="attach\\(trainer, resume_from_checkpoint"):
        other.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))


def test_the_epoch_cap_keeps_the_best_state_and_warmup_runs_once(tmp_path):
    trainer = _hf_trainer(tmp_path, "cap", epochs=3)  # ends inside the dendrite phase
    callback = attach(trainer, perforate.DendriteConfig(**FIXED), seed=0)
    lrs = []

    class Watch(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            lrs.append(trainer.lr_scheduler.get_last_lr()[0])

    trainer.add_callback(Watch())
    trainer.train()
    ctl = callback.controller
    assert ctl.done and callback.events[-1] == perforate.Event.DONE
    assert all(layer.candidates is None for layer in ctl.layers.values())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(ctl.best_score, rel=1e-5)
    # One linear schedule over the whole run: warmup over the first 4 steps only, then
    # decay, through the optimizer rebuilt at the dendrite phase (after step 4).
    peak = max(lrs)
    assert lrs.index(peak) == 3 and lrs[4] < peak and lrs[5] < lrs[4]


@pytest.mark.parametrize("arch", ["t5", "vit"])
def test_t5_and_a_vit_grow_dendrites_and_train(arch):
    """T5 reads `wo.weight.dtype` from outside; a ViT from a config (no download)."""
    from helpers import grow

    torch.manual_seed(0)
    if arch == "t5":
        cfg = transformers.T5Config(
            vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            decoder_start_token_id=0,
        )  # fmt: skip
        model = transformers.T5ForConditionalGeneration(cfg)
        inputs = {"input_ids": torch.randint(1, 32, (2, 6)), "labels": torch.randint(1, 32, (2, 4))}
        probe = "encoder.block.0.layer.1.DenseReluDense.wo"
    else:
        cfg = transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, num_labels=3,
        )  # fmt: skip
        model = transformers.ViTForImageClassification(cfg)
        inputs = {"pixel_values": torch.randn(2, 1, 8, 8), "labels": torch.tensor([0, 2])}
        probe = "vit.layers.0.mlp.fc2"
    model.eval()
    with torch.no_grad():
        before = model(**inputs).logits
    perforate.add_dendrites(model, perforate.DendriteConfig(pair_norms=False))
    layers = perforate.dendritic_layers(model)
    assert probe in layers
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)  # wrapping changes nothing
    gen = torch.Generator().manual_seed(0)
    for layer in layers.values():
        grow(layer, 1, gen)
    model.train()
    loss = model(**inputs).loss
    loss.backward()
    assert torch.isfinite(loss) and layers[probe].output_weight.grad is not None


def test_e96_a_resume_that_does_not_fit_is_refused_before_anything_changes(tmp_path):
    full = _hf_trainer(tmp_path, "full", epochs=3)
    attach(full, perforate.DendriteConfig(**FIXED), seed=0)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-6"  # inside the dendrite phase
    other = _hf_trainer(tmp_path, "other")
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(perforate.CheckpointMismatchError, match="candidates_per_neuron"):
        attach(
            other,
            perforate.DendriteConfig(**FIXED, candidates_per_neuron=2),
            resume_from_checkpoint=checkpoint,
        )
    layers = perforate.dendritic_layers(other.model)
    assert all(layer.phase.value == "neuron" and layer.slots == 0 for layer in layers.values())
    after = {k.replace(".base.", "."): v for k, v in other.model.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # The checkpoint given to attach must be the one the Trainer resumes.
    third = _hf_trainer(tmp_path, "third")
    attach(third, perforate.DendriteConfig(**FIXED), seed=0, resume_from_checkpoint=checkpoint)
    with pytest.raises(perforate.ConfigError, match="the Trainer resumes at step 4"):
        third.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    with pytest.raises(perforate.CheckpointError, match="no checkpoint in"):
        attach(
            _hf_trainer(tmp_path, "empty"),
            perforate.DendriteConfig(**FIXED),
            resume_from_checkpoint=True,
        )


def test_e96_trainer_settings_the_controller_cannot_use_are_refused_before_wrapping(tmp_path):
    trainer = _hf_trainer(tmp_path, "hp")
    trainer.model_init = lambda *a: trainer.model
    with pytest.raises(perforate.ConfigError, match="model_init"):
        attach(trainer, perforate.DendriteConfig(**FIXED))
    for field, value, message in [
        ("eval_strategy", "no", "never evaluates"),
        ("load_best_model_at_end", True, "load_best_model_at_end"),
    ]:
        trainer = _hf_trainer(tmp_path, field)
        setattr(trainer.args, field, value)
        with pytest.raises(perforate.ConfigError, match=message):
            attach(trainer, perforate.DendriteConfig(**FIXED))
        assert not perforate.dendritic_layers(trainer.model)  # refused before wrapping
