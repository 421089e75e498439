"""Saving and loading a perforated model: one safetensors file, structure as JSON inside.

Why one file: the tensors and the JSON describing the structure (config, dendrites per
layer and per neuron) travel in the safetensors header's metadata, so a single atomic
rename publishes both; a crash mid-write leaves the previous file intact. Nothing is ever
unpickled.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from . import files
from .config import DendriteConfig
from .convert import add_dendrites, dendritic_layers, remove_dendrites
from .errors import CheckpointError, CheckpointMismatchError, ConfigError, NotConvertedError
from .layers import Phase, is_candidate_key, is_sized_on_load
from .validation import slot_problems

FORMAT = "perforate.model/1"


def model_structure(model: nn.Module) -> dict[str, Any]:
    layers = dendritic_layers(model)
    if not layers:
        raise NotConvertedError("model holds no dendritic layers; call add_dendrites first")
    config = next(iter(layers.values())).config
    return {
        "format": FORMAT,
        "config": config.to_dict(),
        "layers": {
            name: {
                "kind": layer.kind.name,
                "neurons": layer.neurons,
                "slots": layer.slots,
                "norm": layer.norm_path,
                "dendrites_per_neuron": layer.dendrite_count.tolist(),
            }
            for name, layer in layers.items()
        },
    }


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts: detached, contiguous, no shared storage."""
    return {
        k: v.detach().contiguous().clone()
        for k, v in module.state_dict().items()
        if not is_candidate_key(k)
    }


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write structure and weights of a perforated model to `path`, atomically.

    Candidates of a dendrite phase in progress are not part of the model and not saved.
    """
    header = model_structure(model)
    if metadata:
        header["user"] = metadata
    files.write(path, header, state_tensors(model))


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of a perforate model file; `CheckpointError` if it is not one."""
    header, tensors = files.read(path, expect=FORMAT)
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: format {header.get('format')!r} is not {FORMAT!r}; a training "
            "checkpoint resumes with Perforator.resume, and a newer format needs a newer "
            "perforate"
        )
    return header, tensors


def _mismatches(
    model: nn.Module, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> list[str]:
    layers = dendritic_layers(model)
    saved = header["layers"]
    if not isinstance(saved, dict):
        return ["the header's layer table is not a mapping"]
    problems = layer_set_mismatches(layers, saved)
    config = next(iter(layers.values())).config if layers else None
    if config is not None:
        saved_config = header.get("config")
        if isinstance(saved_config, dict):
            problems += [f"setting {d}" for d in config.structural_differences(saved_config)]
        else:  # nothing to compare the model's settings with: refuse, never assume
            problems.append(
                f"the saved config is {type(saved_config).__name__}, not a mapping of settings"
            )
    for name, layer in layers.items():
        if name not in saved:
            continue
        s = saved[name]
        if not isinstance(s, dict):
            problems.append(f"layer {name!r}: saved structure is not a mapping")
            continue
        if layer.phase == Phase.DENDRITE:
            problems.append(
                f"layer {name!r} is in a dendrite phase (candidates attached); "
                "end it with start_neuron_phase() before loading"
            )
        if s.get("kind") != layer.kind.name:
            problems.append(f"layer {name!r}: kind {layer.kind.name} here, {s.get('kind')} saved")
        if s.get("neurons") != layer.neurons:
            problems.append(
                f"layer {name!r}: {layer.neurons} neurons here, {s.get('neurons')!r} saved"
            )
        if s.get("norm") != layer.norm_path:
            problems.append(
                f"layer {name!r}: paired norm {layer.norm_path!r} here, {s.get('norm')!r} saved"
            )
        problems += slot_problems(name, layer, s.get("slots"), tensors)
        counts = s.get("dendrites_per_neuron")
        stored = tensors.get(f"{name}.dendrite_count")
        if stored is not None and counts != stored.tolist():
            problems.append(f"layer {name!r}: header counts {counts!r} differ from the tensor's")
    return problems + tensor_mismatches(model, tensors)


def layer_set_mismatches(here: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """Wrapped layers present on one side only."""
    return [
        f"layer {n!r} is in the checkpoint but not in the model" for n in saved if n not in here
    ] + [f"layer {n!r} is in the model but not in the checkpoint" for n in here if n not in saved]


def tensor_mismatches(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and differently shaped tensors, leaving out those whose shape
    follows the saved structure (dendrite slots, candidates: sized while loading)."""
    problems = []
    own = model.state_dict()
    for key, value in own.items():
        if is_sized_on_load(key):
            continue
        if key not in tensors:
            problems.append(f"tensor {key!r} is missing from the checkpoint")
        elif tuple(tensors[key].shape) != tuple(value.shape):
            problems.append(
                f"tensor {key!r}: shape {tuple(value.shape)} here, "
                f"{tuple(tensors[key].shape)} saved"
            )
    problems += [
        f"tensor {key!r} is in the checkpoint but not in the model"
        for key in tensors
        if key not in own and not is_sized_on_load(key)
    ]
    return problems


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore structure and weights saved by `save` into `model`, bit for bit.

    `model` is a freshly built plain model (it is wrapped with the saved config) or an
    already wrapped one, whose settings must agree with the saved ones. Every difference
    (architecture, settings, malformed or inconsistent structure) raises
    `CheckpointMismatchError` / `CheckpointError` listing all of them, and on any error the
    model is exactly as it was.
    """
    header, tensors = read(path)
    wrapped_here = not dendritic_layers(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        if wrapped_here:
            try:
                config = DendriteConfig.from_dict(header.get("config"))
            except (ConfigError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{path}: saved config is invalid: {exc}") from exc
            add_dendrites(model, config)
        problems = _mismatches(model, header, tensors)
        if problems:
            raise CheckpointMismatchError(
                f"{path} does not match this model ({len(problems)} difference(s)):\n  - "
                + "\n  - ".join(problems)
            )
        try:
            model.load_state_dict(tensors, strict=True)  # layers size slots from the tensors
        except RuntimeError as exc:
            raise CheckpointMismatchError(f"{path}: {exc}") from exc
    except BaseException:
        if wrapped_here and dendritic_layers(model):
            remove_dendrites(model)
        model.load_state_dict(before)
        raise
    return model
