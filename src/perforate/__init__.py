"""perforate: Perforated Backpropagation for PyTorch.

Dendrite nodes, trained by the cascade-correlation objective against each neuron's
remaining error, grown into the layers of any model.
"""

from .accounting import LayerParameters, ParameterReport, parameter_report
from .checkpoint import load, save
from .config import DendriteConfig
from .controller import ControllerPhase, EpochRecord, Event, Perforator, ScoreError
from .convert import add_dendrites, dendritic_layers, find_norm_pairs, remove_dendrites
from .correlation import CandidateStats, surrogate_gradient
from .errors import (
    AlreadyConvertedError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    InputShapeError,
    InstallError,
    NoTargetLayersError,
    NotConvertedError,
    PerforateError,
    PerforateWarning,
    PhaseError,
    UnsupportedLayerError,
)
from .layers import DendriticLayer, Phase

__version__ = "0.1.0"

__all__ = [
    "AlreadyConvertedError",
    "CandidateStats",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "ControllerPhase",
    "DendriteConfig",
    "DendriticLayer",
    "EpochRecord",
    "Event",
    "InputShapeError",
    "InstallError",
    "LayerParameters",
    "NoTargetLayersError",
    "NotConvertedError",
    "ParameterReport",
    "PerforateError",
    "PerforateWarning",
    "Perforator",
    "Phase",
    "PhaseError",
    "ScoreError",
    "UnsupportedLayerError",
    "__version__",
    "add_dendrites",
    "dendritic_layers",
    "find_norm_pairs",
    "load",
    "parameter_report",
    "remove_dendrites",
    "save",
    "surrogate_gradient",
]
