"""perforate: Perforated Backpropagation for PyTorch.

Dendrite nodes, trained by the cascade-correlation objective against each neuron's
remaining error, grown into the layers of any model. This package is the library; the
demo, benchmarks and command line live in `perforate.experiments`, which it never imports.
"""

import logging as _logging
import sys as _sys

from .accounting import LayerParameters, ParameterReport, parameter_report
from .candidates import CandidatePool, no_candidate_statistics
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

__version__ = "0.4.0"

# Quiet by default, as a library should: nothing reaches stderr unless the application
# configures logging or calls `show_progress`.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())


def show_progress(level: int = _logging.INFO, stream=None) -> _logging.Handler:
    """Print the controller's decisions (phase changes, installs, why a run ends) to
    `stream` (default: stderr), without configuring logging by hand: one call, e.g.
    before the loop. Attaches one `StreamHandler` to the "perforate" logger and lowers
    the logger to `level`; calling it again updates that handler and returns it.

    Records at `level` also reach handlers of your own on the root logger, if any."""
    logger = _logging.getLogger(__name__)
    handler = next((h for h in logger.handlers if getattr(h, "_perforate_progress", False)), None)
    if handler is None:
        handler = _logging.StreamHandler(stream if stream is not None else _sys.stderr)
        handler.setFormatter(_logging.Formatter("perforate: %(message)s"))
        handler._perforate_progress = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setLevel(level)
    logger.setLevel(level)
    return handler


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
    "no_candidate_statistics",
    "output_layer",
    "parameter_report",
    "remove_dendrites",
    "save",
    "show_progress",
    "surrogate_gradient",
    "to_plain",
]
