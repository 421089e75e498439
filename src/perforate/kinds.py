"""The one place that knows layer kinds: where a kind's neurons are and how to mirror it.

A dendrite bank for a layer is a layer of the same kind and input, with `n * C` outputs:
a Linear of the same in-features, or a Conv of the same kernel, stride, padding and
dilation. Adding a kind means adding one entry here, not branches elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import UnsupportedLayerError

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def built_as(layer: nn.Module) -> type:
    """The class `layer` was built as. `torch.nn.utils.parametrize` (`weight_norm`,
    `spectral_norm`, `orthogonal` of `torch.nn.utils.parametrizations`) swaps in a generated
    subclass (`ParametrizedLinear`) whose only change is that the weight is computed from
    other parameters; its forward is the original's, so the layer wraps like one (its
    parameters, e.g. weight_g and weight_v, are what trains and freezes)."""
    if parametrize.is_parametrized(layer):
        return type(layer).__bases__[0]
    return type(layer)


@dataclass(frozen=True)
class LayerKind:
    """How dendrites attach to one layer class."""

    name: str
    layer_type: type[nn.Module]
    spatial_dims: int  # 0 for Linear: neurons on the last axis; d for ConvNd: channel axis 1

    def matches(self, layer: nn.Module) -> bool:
        """Whether `layer` is of this kind (exact class: subclasses may change forward)."""
        return built_as(layer) is self.layer_type

    def neurons(self, layer: nn.Module) -> int:
        return layer.out_features if self.spatial_dims == 0 else layer.out_channels

    def in_size(self, layer: nn.Module) -> int:
        return layer.in_features if self.spatial_dims == 0 else layer.in_channels

    def fan_in(self, layer: nn.Module) -> int:
        """Input weights of one neuron (without bias)."""
        if self.spatial_dims == 0:
            return layer.in_features
        return layer.in_channels * math.prod(layer.kernel_size)

    def check_supported(self, layer: nn.Module, path: str) -> None:
        if self.neurons(layer) == 0 or self.in_size(layer) == 0:
            raise UnsupportedLayerError(
                f"{path}: {type(layer).__name__} with {self.in_size(layer)} inputs and "
                f"{self.neurons(layer)} outputs has no neuron a dendrite could serve. Exclude "
                f"it with exclude=({path!r},) or set skip_unsupported=True."
            )
        if self.spatial_dims and layer.groups != 1:
            raise UnsupportedLayerError(
                f"{path}: {type(layer).__name__} with groups={layer.groups} is not supported "
                "(dendrites mirror the layer as a groups=1 conv). Exclude it with "
                f"exclude=({path!r},) or set skip_unsupported=True."
            )

    def make_bank(self, layer: nn.Module, outputs: int) -> nn.Module:
        """A fresh layer of the same kind with `outputs` outputs and a bias."""
        w = layer.weight
        kw = {"device": w.device, "dtype": w.dtype}
        if self.spatial_dims == 0:
            return nn.Linear(layer.in_features, outputs, bias=True, **kw)
        return self.layer_type(
            layer.in_channels,
            outputs,
            kernel_size=layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=1,
            bias=True,
            padding_mode=layer.padding_mode,
            **kw,
        )

    def per_neuron(self, t: torch.Tensor) -> torch.Tensor:
        """Reshape (..., C) per-neuron values to broadcast over this kind's output."""
        if self.spatial_dims == 0:
            return t
        return t.reshape(*t.shape, *([1] * self.spatial_dims))

    def split(self, out: torch.Tensor, groups: int, neurons: int) -> torch.Tensor:
        """View a bank output with `groups * C` neurons as (..., groups, C[, spatial])."""
        if self.spatial_dims == 0:
            return out.unflatten(-1, (groups, neurons))
        return out.unflatten(1, (groups, neurons))

    def group_axis(self) -> int:
        """Axis of the `groups` dimension in a `split` output."""
        return -2 if self.spatial_dims == 0 else 1

    def patterns_last(self, t: torch.Tensor) -> torch.Tensor:
        """(..., C) or (B, C, *S) -> (N, C): one row per pattern, neurons last."""
        if self.spatial_dims == 0:
            return t.reshape(-1, t.shape[-1])
        return t.movedim(1, -1).reshape(-1, t.shape[1])


@dataclass(frozen=True)
class TransposedLinearKind(LayerKind):
    """`transformers.pytorch_utils.Conv1D` (GPT-2's projections): a Linear whose weight is
    stored (in, out). Matched by class name and module, so perforate does not import
    transformers; its banks are ordinary Linears (one row per output, as every bank)."""

    def matches(self, layer: nn.Module) -> bool:
        t = built_as(layer)
        return t.__name__ == "Conv1D" and t.__module__.startswith("transformers.")

    def neurons(self, layer: nn.Module) -> int:
        return layer.out_features if isinstance(layer, nn.Linear) else layer.weight.shape[1]

    def in_size(self, layer: nn.Module) -> int:
        return layer.in_features if isinstance(layer, nn.Linear) else layer.weight.shape[0]

    def fan_in(self, layer: nn.Module) -> int:
        return self.in_size(layer)

    def make_bank(self, layer: nn.Module, outputs: int) -> nn.Module:
        w = layer.weight
        return nn.Linear(self.in_size(layer), outputs, bias=True, device=w.device, dtype=w.dtype)


KINDS: dict[str, LayerKind] = {
    "Linear": LayerKind("Linear", nn.Linear, 0),
    "Conv1d": LayerKind("Conv1d", nn.Conv1d, 1),
    "Conv2d": LayerKind("Conv2d", nn.Conv2d, 2),
    "Conv3d": LayerKind("Conv3d", nn.Conv3d, 3),
    "Conv1D": TransposedLinearKind("Conv1D", nn.Module, 0),
}


def kind_of(layer: nn.Module) -> LayerKind | None:
    """The registered kind of `layer` (exact class match: subclasses may change forward)."""
    for kind in KINDS.values():
        if kind.matches(layer):
            return kind
    return None


def norm_matches(kind: LayerKind, layer: nn.Module, norm: nn.Module) -> bool:
    """Whether `norm` normalises per neuron of `layer`, so the pair forms one unit."""
    c = kind.neurons(layer)
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return norm.num_features == c
    if isinstance(norm, nn.GroupNorm):
        return kind.spatial_dims > 0 and norm.num_channels == c
    if isinstance(norm, nn.LayerNorm):
        shape = tuple(norm.normalized_shape)
        if kind.spatial_dims == 0:
            return shape == (c,)
        return len(shape) == 1 + kind.spatial_dims and shape[0] == c
    return False
