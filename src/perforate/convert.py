"""Finding target layers in any nn.Module, pairing them with norms, wrapping, unwrapping.

Module surgery keeps names predictable: a wrapped layer `encoder.0` becomes a
`DendriticLayer` at `encoder.0` whose original sits at `encoder.0.base`; a paired norm
moves to `encoder.0.norm` and an `nn.Identity` takes its old place. `remove_dendrites`
puts every module back where it was.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import logging
import warnings
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .config import DendriteConfig
from .errors import (
    AlreadyConvertedError,
    NoTargetLayersError,
    NotConvertedError,
    PerforateWarning,
    PhaseError,
    UnsupportedLayerError,
)
from .kinds import KINDS, NORM_TYPES, kind_of, norm_matches
from .layers import DendriticLayer

log = logging.getLogger(__name__)


def dendritic_layers(model: nn.Module) -> dict[str, DendriticLayer]:
    """Every DendriticLayer of `model` by qualified name (a shared one appears once)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DendriticLayer)}


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _selected(name: str, config: DendriteConfig) -> bool:
    if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude)


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every qualified name it is registered under (tied modules)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def _pairs_in_sequentials(model: nn.Module) -> dict[str, str]:
    pairs = {}
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            kind = kind_of(a)
            if kind is not None and isinstance(b, NORM_TYPES) and norm_matches(kind, a, b):
                prefix = f"{seq_name}." if seq_name else ""
                pairs[prefix + a_name] = prefix + b_name
    return pairs


def _pairs_by_tracing(model: nn.Module) -> tuple[dict[str, str], dict[str, int]] | None:
    """Layer -> norm pairs where the layer's only consumer is the norm, and how often each
    module is called in the traced forward; None if untraceable."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        layer = model.get_submodule(node.target)
        kind = kind_of(layer)
        users = list(node.users)
        if kind is None or len(users) != 1:
            continue
        user = users[0]
        if user.op != "call_module" or calls[user.target] != 1 or user.args[:1] != (node,):
            continue
        norm = model.get_submodule(user.target)
        if isinstance(norm, NORM_TYPES) and norm_matches(kind, layer, norm):
            pairs[node.target] = user.target
    return pairs, calls


def _why_not_paired(layer: str, norm: str, calls: dict[str, int]) -> str:
    """Why the trace refuses a pair that sits side by side in an nn.Sequential."""
    if calls.get(layer, 0) != 1 or calls.get(norm, 0) != 1:
        return (
            f"the forward calls {layer} {calls.get(layer, 0)} time(s) and {norm} "
            f"{calls.get(norm, 0)} time(s); pairing needs exactly one call each"
        )
    return f"{norm} does not consume the output of {layer} alone (it has another user)"


def find_norm_pairs(model: nn.Module) -> dict[str, str]:
    """Map qualified layer name -> name of the norm that directly follows it.

    Found inside every `nn.Sequential`, and anywhere `torch.fx` can trace the model.
    Where the model traces, the trace decides: a pair is formed only when the layer and
    the norm are each called once and the norm consumes the layer's output alone (a layer
    or norm of a Sequential also called directly elsewhere stays unpaired, logged at INFO;
    pairing it would move the norm into the wrapper and change the other call's result).
    Sequential pairs the trace cannot see (both inside a leaf module) are kept.
    Warns (`PerforateWarning`) when tracing fails and norms outside Sequentials exist.
    """
    pairs = _pairs_in_sequentials(model)
    traced = _pairs_by_tracing(model)
    if traced is not None:
        traced_pairs, calls = traced
        for layer, norm in list(pairs.items()):
            unseen = calls.get(layer, 0) == 0 and calls.get(norm, 0) == 0
            if traced_pairs.get(layer) != norm and not unseen:
                del pairs[layer]
                log.info(
                    "not pairing %s with norm %s: %s",
                    layer,
                    norm,
                    _why_not_paired(layer, norm, calls),
                )
        pairs.update(traced_pairs)
        return pairs
    paired_norms = set(pairs.values())
    loose = [
        n for n, m in model.named_modules() if isinstance(m, NORM_TYPES) and n not in paired_norms
    ]
    if loose:
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__}, so norm layers outside "
            f"nn.Sequential ({', '.join(loose[:5])}{'...' if len(loose) > 5 else ''}) were not "
            "paired with the layer before them; dendrites on those layers enter before "
            "the norm. Set pair_norms=False to silence this.",
            PerforateWarning,
            stacklevel=3,
        )
    return pairs


def add_dendrites(model: nn.Module, config: DendriteConfig | None = None) -> nn.Module:
    """Wrap every target layer of `model` in place and return `model`.

    Right after wrapping the model computes exactly what it computed before.
    """
    config = DendriteConfig() if config is None else config
    if not isinstance(config, DendriteConfig):
        raise TypeError(f"config must be a DendriteConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, DendriticLayer) or dendritic_layers(model):
        raise AlreadyConvertedError(
            "model already holds dendritic layers; call remove_dendrites(model) first "
            "or keep using the converted model"
        )
    wanted = [KINDS[t] for t in config.layer_types]
    if any(k.matches(model) for k in wanted):
        raise NoTargetLayersError(
            "model is itself a single target layer; wrap it in a container "
            "(e.g. nn.Sequential(layer)) so it can be replaced in place"
        )
    aliases = _aliases(model)
    targets: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if name and any(k.matches(module) for k in wanted) and _selected(name, config):
            targets.setdefault(id(module), (name, module))
    if not targets:
        others = [k for k in KINDS if k not in config.layer_types]
        present = sorted({k for k in others for m in model.modules() if KINDS[k].matches(m)})
        raise NoTargetLayersError(
            f"no layer to wrap in {type(model).__name__}: searched for types "
            f"{list(config.layer_types)}"
            + (f", names matching {list(config.include)}" if config.include else "")
            + (f", excluding {list(config.exclude)}" if config.exclude else "")
            + "".join(f"; the model has {k} layers: add {k!r} to layer_types" for k in present)
        )
    pairs = find_norm_pairs(model) if config.pair_norms else {}
    wrapped: list[tuple[list[str], DendriticLayer]] = []
    for name, module in targets.values():
        kind = kind_of(module)
        try:
            kind.check_supported(module, name)
        except UnsupportedLayerError:
            if config.skip_unsupported:
                continue
            raise
        norm_name = pairs.get(name) if len(aliases[id(module)]) == 1 else None
        norm = None
        if norm_name is not None and len(aliases[id(model.get_submodule(norm_name))]) == 1:
            norm = model.get_submodule(norm_name)
        else:
            norm_name = None
        layer = DendriticLayer(module, kind, config, norm=norm, path=name, norm_path=norm_name)
        wrapped.append((aliases[id(module)], layer))
    if not wrapped:
        raise NoTargetLayersError(
            "every target layer was skipped as unsupported (skip_unsupported=True)"
        )
    _warn_hooks_left_behind(wrapped)
    for names, layer in wrapped:
        for n in names:
            _set_module(model, n, layer)
        if layer.norm_path is not None:
            _set_module(model, layer.norm_path, nn.Identity())
    _guard_fast_paths(model)
    return model


# torch's own reparametrisations (old-style weight_norm, spectral_norm) are pre-hooks that
# belong on the weight's module and keep working there.
_HOOK_KINDS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _user_hooks(module: nn.Module) -> list[str]:
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = []
    for attr in _HOOK_KINDS:
        hooks = getattr(module, attr, None) or {}
        for hook in hooks.values():
            if not isinstance(hook, (WeightNorm, SpectralNorm)):
                found.append(attr.strip("_").replace("_hooks", " hook").replace("_", " "))
    return found


def _warn_hooks_left_behind(wrapped: list[tuple[list[str], DendriticLayer]]) -> None:
    """Hooks stay on the module they were registered on, which becomes `<name>.base`:
    a forward hook there sees (and may change) the output before the dendrites are added,
    a pre-hook changes what the base sees but not what the dendrites see. Moving them to
    the wrapper would change what they see in another way (after a paired norm), so the
    user is told and decides."""
    found = []
    for names, layer in wrapped:
        for module, where in ((layer.base, names[0]), (layer.norm, layer.norm_path)):
            kinds = _user_hooks(module) if module is not None else []
            if kinds:
                found.append(f"{where} ({', '.join(sorted(set(kinds)))})")
    if found:
        warnings.warn(
            f"hooks registered before add_dendrites stay on the original modules: "
            f"{'; '.join(found)}. They now run on `<layer>.base` (or the paired norm inside "
            "the wrapper), before dendrites are added, and a pre-hook's change of the input "
            "does not reach the dendrites. To see a wrapped layer's whole output, register "
            "the hook on model.get_submodule(name) after add_dendrites.",
            PerforateWarning,
            stacklevel=3,
        )


def output_layer(model: nn.Module, config: DendriteConfig | None = None) -> str:
    """Qualified name of the last layer `config` would target, in registration order: the
    output layer of a feed-forward model. `config.replace(exclude=(output_layer(model),))`
    grows dendrites into hidden layers only."""
    config = DendriteConfig() if config is None else config
    wanted = [KINDS[t] for t in config.layer_types]
    names = [
        n
        for n, m in model.named_modules()
        if n and any(k.matches(m) for k in wanted) and _selected(n, config)
    ]
    if not names:
        raise NoTargetLayersError(
            f"no layer of types {list(config.layer_types)} in {type(model).__name__}"
        )
    return names[-1]


def hidden_layers_only(model: nn.Module, config: DendriteConfig | None = None) -> DendriteConfig:
    """`config` with the model's output layer (see `output_layer`) excluded."""
    config = DendriteConfig() if config is None else config
    return config.replace(exclude=(*config.exclude, output_layer(model, config)))


def _guard_fast_paths(model: nn.Module) -> None:
    """Keep `nn.TransformerEncoderLayer`'s inference fast path away from grown layers.

    That path reads `linear1.weight` and friends and runs one fused kernel, which would
    skip the dendrites (a wrapped layer) or fail (a `to_plain` graph). The layer decides
    on its public `activation_relu_or_gelu`: 0 turns it off; where nothing grown is left
    the layer gets torch's own value back. An `nn.TransformerEncoder` holding grown layers
    also stops turning padded batches into nested tensors (`use_nested_tensor`, which
    wrapped layers cannot take); that stays off after removal (a speed-up, not a result).
    """
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
            isinstance(m, (DendriticLayer, torch.fx.GraphModule)) for m in module.modules()
        ):
            module.use_nested_tensor = False
        if not isinstance(module, nn.TransformerEncoderLayer):
            continue
        grown = any(isinstance(m, (DendriticLayer, torch.fx.GraphModule)) for m in module.modules())
        act = module.activation
        native = (
            1
            if act is F.relu or isinstance(act, nn.ReLU)
            else 2
            if act is F.gelu or isinstance(act, nn.GELU)
            else 0
        )
        module.activation_relu_or_gelu = 0 if grown else native


def remove_dendrites(model: nn.Module) -> nn.Module:
    """Undo `add_dendrites` in place: originals (and norms) go back; dendrites are dropped.
    Refused inside a dendrite phase (its units are frozen until the phase ends)."""
    layers = dendritic_layers(model)
    if not layers:
        raise NotConvertedError("model holds no dendritic layers; nothing to remove")
    busy = [n for n, layer in layers.items() if layer.phase.value == "dendrite"]
    if busy:
        raise PhaseError(
            f"layers {busy} are in a dendrite phase (their weights frozen): end it before "
            "remove_dendrites with ctl.finish() (the controller's best state, all weights "
            "trainable again), or layer.start_neuron_phase() on each layer without one"
        )
    aliases = _aliases(model)
    for layer in layers.values():
        for n in aliases[id(layer)]:
            _set_module(model, n, layer.base)
        if layer.norm_path is not None:
            _set_module(model, layer.norm_path, layer.norm)
    _guard_fast_paths(model)
    return model


def to_plain(model: nn.Module, *example_args: Any, **example_kwargs: Any) -> nn.Module:
    """A copy of a grown model made of PyTorch alone: for deployment without perforate.

    Layers without dendrites go back to their original layer (and norm); each layer with
    dendrites becomes the `torch.fx.GraphModule` that `torch.export` makes of it in
    inference, with its batch and sequence (or spatial) sizes left free (its inputs keep
    the example's rank). `example_args` / `example_kwargs` are one input to `model`, run
    once to see what each layer receives.
    The copy computes what the model computes (tested bit for bit), holds no perforate
    class, pickles without perforate and exports whole with `torch.export`. `model` is
    unchanged. Refused inside a dendrite phase (the candidates are not part of the model).
    The copy is in `eval()` mode and its grown layers are fixed inference graphs (no
    training, no dropout switch inside them). Needs torch >= 2.6 (`torch.export.Dim.AUTO`).
    """
    export = getattr(torch, "export", None)
    if export is None or not hasattr(getattr(export, "Dim", None), "AUTO"):
        raise NotImplementedError("to_plain needs torch.export with Dim.AUTO (torch >= 2.6)")
    layers = dendritic_layers(model)
    if not layers:
        raise NotConvertedError("model holds no dendritic layers; it is plain already")
    busy = [n for n, layer in layers.items() if layer.phase.value == "dendrite"]
    if busy:
        raise PhaseError(f"layers {busy} are in a dendrite phase: end it before to_plain")
    if not example_args and not example_kwargs:
        raise TypeError(
            "to_plain needs one example input to the model, as it is called in forward "
            "(to_plain(model, x) with x a batch): it runs the model once to see what each "
            "grown layer receives"
        )
    plain = copy.deepcopy(model).eval()
    layers = dendritic_layers(plain)
    inputs: dict[str, torch.Tensor] = {}

    def catch(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            inputs.setdefault(name, args[0].detach())

        return hook

    grown = {n: layer for n, layer in layers.items() if layer.slots}
    handles = [layer.register_forward_pre_hook(catch(n)) for n, layer in grown.items()]
    try:
        with torch.no_grad():
            plain(*example_args, **example_kwargs)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(grown) - set(inputs))
    if missing:
        raise ValueError(f"the example input never reached layers {missing}")
    aliases = _aliases(plain)
    for name, layer in layers.items():
        layer.start_inference()
        if name not in grown:
            replacement = layer.base
            if layer.norm_path is not None:
                _set_module(plain, layer.norm_path, layer.norm)
        else:
            x = inputs[name]
            fixed = x.dim() - 1 if layer.kind.spatial_dims == 0 else 1  # the feature axis
            free = {i: export.Dim.AUTO for i in range(x.dim()) if i != fixed}
            exported = export.export(layer, (x,), dynamic_shapes=(free,)).module()
            replacement = _plain_graph(exported)
        for n in aliases[id(layer)]:
            _set_module(plain, n, replacement)
    _guard_fast_paths(plain)
    return plain


def _plain_graph(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """An exported layer as a bare GraphModule: `forward(x) -> tensor` on a fresh graph,
    without the export's guard module, input hooks and tracer (closures and classes that
    do not pickle; the ops check shapes themselves)."""
    source = module.graph
    for node in list(source.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            source.erase_node(node)
    graph = torch.fx.Graph()  # plain arguments, no pytree specs, no tracer class
    result = graph.graph_copy(source, {})
    if isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    graph.output(result)
    return torch.fx.GraphModule(module, graph)
