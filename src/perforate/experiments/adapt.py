"""Growing into a trained model: load its weights, freeze its trunk, or give it LoRA.

With `[model] checkpoint`, every arm starts from those weights, and `[model] trainable`
(fnmatch patterns of parameter names, e.g. ["head.*"]) names what trains besides what an
arm adds. Three ways to prepare the model, one per kind of arm:

    frozen_trunk  only `trainable` trains (head, restart, pb and gd on a frozen trunk)
    finetune      everything trains
    lora          the trunk is frozen and LoRA adapters (the `peft` library) are added to
                  its Linear layers, at the rank whose parameters come closest to what one
                  dendrite per neuron would add (`lora:R`: rank R); `trainable` trains too

Checkpoints are safetensors files (a plain state dict, or a `perforate.save` file of the
plain model) or `torch.save` state dicts read with `weights_only=True`; nothing else is
unpickled. Keys whose name and shape match the model load; the others are listed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .task import TaskError, first_line

log = logging.getLogger(__name__)

PREPARATIONS = ("scratch", "frozen_trunk", "finetune", "lora")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"[model] checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TaskError(
            f"[model] checkpoint {path}: cannot read it "
            f"({type(exc).__name__}: {first_line(exc)}); give "
            "a safetensors file or a torch.save state dict"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaskError(f"[model] checkpoint {path} is not a state dict of tensors")
    return state


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> list[str]:
    """Copy every tensor whose name and shape match; return the model keys left as built
    (a new head, say). Nothing matching at all is an error."""
    own = model.state_dict()
    fit = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise TaskError(
            f"[model] checkpoint {where}: none of its {len(weights)} tensors matches the "
            f"model's names and shapes (model keys: {', '.join(list(own)[:6])}...)"
        )
    skipped = sorted(k for k in weights if k not in fit)
    if skipped:
        log.info(
            "checkpoint %s: %d tensors of another shape or name skipped: %s",
            where,
            len(skipped),
            ", ".join(skipped[:8]),
        )
    model.load_state_dict(fit, strict=False)
    return sorted(k for k in own if k not in fit)


def _matches(name: str, patterns: list[str]) -> bool:
    bare = name.removeprefix("base_model.model.")
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, bare))


def freeze_trunk(model: nn.Module, trainable: list[str]) -> int:
    """Only parameters matching `trainable` train; returns how many tensors do."""
    kept = 0
    for name, p in model.named_parameters():
        keep = _matches(name, trainable)
        p.requires_grad_(keep)
        kept += keep
    if kept == 0:
        raise TaskError(
            f"[model] trainable = {trainable} matches no parameter of the model; patterns "
            "are fnmatch patterns of names such as "
            + ", ".join(n for n, _ in list(model.named_parameters())[:4])
        )
    return kept


def trunk_layers(model: nn.Module, trainable: list[str]) -> list[tuple[str, nn.Module]]:
    """The Linear layers none of whose parameters is trainable: LoRA's targets."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not any(_matches(f"{name}.{p}", trainable) for p, _ in m.named_parameters())
    ]


def lora_rank(model: nn.Module, trainable: list[str]) -> int:
    """The rank at which LoRA on the trunk adds about what one dendrite per neuron adds
    to every Linear (fan-in + 2 parameters per neuron: input weights, bias, output
    weight): r * sum(in + out) over the trunk layers."""
    layers = trunk_layers(model, trainable)
    if not layers:
        raise TaskError(
            "the lora arm found no frozen Linear layer to adapt: [model] trainable matches "
            "every layer"
        )
    one_dendrite = sum(
        m.out_features * (m.in_features + 2)
        for _, m in model.named_modules()
        if isinstance(m, nn.Linear)
    )
    per_rank = sum(m.in_features + m.out_features for _, m in layers)
    return max(1, round(one_dendrite / per_rank))


def add_lora(model: nn.Module, trainable: list[str], rank: int | None = None) -> nn.Module:
    """The model with LoRA on its trunk's Linear layers (peft), `trainable` unfrozen."""
    from peft import LoraConfig, get_peft_model

    r = rank if rank is not None else lora_rank(model, trainable)
    targets = [name for name, _ in trunk_layers(model, trainable)]
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=r, target_modules=targets, lora_dropout=0.0)
    )
    for name, p in peft_model.named_parameters():
        if _matches(name, trainable):
            p.requires_grad_(True)
    return peft_model


def head_modules(model: nn.Module, trainable: list[str]) -> tuple[str, ...]:
    """Names of the wrappable layers `trainable` covers (arms without dendrites wrap only
    these, leaving LoRA's and the trunk's layers as they are)."""
    names = tuple(
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and "lora_" not in name
        and any(_matches(f"{name}.{p}", trainable) for p, _ in m.named_parameters())
    )
    if not names:
        raise TaskError(f"[model] trainable = {trainable} covers no Linear or Conv layer")
    return names


def prepare(
    model: nn.Module, how: str, checkpoint: str | None, trainable: list[str] | None
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, config overrides) for one way of preparing (see the module docstring)."""
    if how == "scratch" or checkpoint is None:
        return model, {}
    trainable = trainable or []
    left = load_matching(model, read_weights(checkpoint), checkpoint)
    untrained = [k for k in left if not _matches(k, trainable)]
    if untrained:  # a trunk left at its random start is not the trained model
        raise TaskError(
            f"[model] checkpoint {checkpoint} leaves {len(untrained)} tensor(s) outside "
            f"[model] trainable at their random start ({', '.join(untrained[:4])}"
            f"{', ...' if len(untrained) > 4 else ''}): the checkpoint does not fit the "
            "factory's model in name and shape (a plain state dict of that model, e.g. "
            "perforate.to_plain(...).state_dict(), fits)"
        )
    if how == "finetune":
        return model, {}
    if how.partition(":")[0] == "lora":  # "lora:R": rank R instead of the matched one
        rank = int(how.partition(":")[2]) if ":" in how else None
        model = add_lora(model, trainable, rank)
        return model, {"include": head_modules(model, trainable)}
    freeze_trunk(model, trainable)
    return model, {}
