"""perforate: Perforated Backpropagation for PyTorch.

Dendrite nodes, trained by the cascade-correlation objective against each neuron's
remaining error, grown into the layers of any model. This package is the library; the
demo, benchmarks and command line live in `perforate.experiments`, which it never imports.
"""

from .accounting import LayerParameters, ParameterReport, parameter_report
from .candidates import CandidatePool
from .checkpoint import load, save
from .config import DendriteConfig
from .controller import Perforator
from .convert import (
    add_dendrites,
    dendritic_layers,
    find_norm_pairs,
    hidden_layers_only,
    output_layer,
    remove_dendrites,
    to_plain,
)
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
    ScoreError,
    UnsupportedLayerError,
)
from .events import EpochRecord, Event
from .layers import DendriticLayer, Phase
from .rules import (
    ClosedFormRule,
    CorrelationRule,
    GradientRule,
    OutputErrorRule,
    RestartRule,
    SparseRule,
    TrainingRule,
)
from .selection import BestCandidate
from .switching import BudgetSwitching, FixedSwitching, PatienceSwitching, Switching

__version__ = "0.3.0"

__all__ = [
    "AlreadyConvertedError",
    "BestCandidate",
    "BudgetSwitching",
    "CandidatePool",
    "CandidateStats",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClosedFormRule",
    "ConfigError",
    "CorrelationRule",
    "DendriteConfig",
    "DendriticLayer",
    "EpochRecord",
    "Event",
    "FixedSwitching",
    "GradientRule",
    "InputShapeError",
    "InstallError",
    "LayerParameters",
    "NoTargetLayersError",
    "NotConvertedError",
    "OutputErrorRule",
    "ParameterReport",
    "PatienceSwitching",
    "PerforateError",
    "PerforateWarning",
    "Perforator",
    "Phase",
    "PhaseError",
    "RestartRule",
    "ScoreError",
    "SparseRule",
    "Switching",
    "TrainingRule",
    "UnsupportedLayerError",
    "__version__",
    "add_dendrites",
    "dendritic_layers",
    "find_norm_pairs",
    "hidden_layers_only",
    "load",
    "output_layer",
    "parameter_report",
    "remove_dendrites",
    "save",
    "surrogate_gradient",
    "to_plain",
]
