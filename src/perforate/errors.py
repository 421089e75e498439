"""Exceptions and warnings raised by perforate.

Every failure has its own class so callers can catch exactly what they expect, and every
message says what was wrong and how to fix it.
"""

from __future__ import annotations


class PerforateError(Exception):
    """Base class of every error perforate raises."""


class ConfigError(PerforateError, ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


class NoTargetLayersError(PerforateError, ValueError):
    """`add_dendrites` found no layer to wrap."""


class UnsupportedLayerError(PerforateError, TypeError):
    """A targeted layer has a configuration dendrites cannot mirror (e.g. grouped conv)."""


class AlreadyConvertedError(PerforateError, RuntimeError):
    """`add_dendrites` was called on a model that already holds dendritic layers."""


class NotConvertedError(PerforateError, RuntimeError):
    """An operation needs dendritic layers but the model has none."""


class PhaseError(PerforateError, RuntimeError):
    """An operation is not valid in the layer's or controller's current phase."""


class InputShapeError(PerforateError, ValueError):
    """A wrapped layer received an input of the wrong rank or feature size."""


class InstallError(PerforateError, ValueError):
    """A candidate choice passed to `install` is malformed."""


class CheckpointError(PerforateError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a perforate file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's structure does not match the model it is loaded into."""


class ScoreError(PerforateError, ValueError):
    """A validation score passed to `end_epoch` is not a finite number."""


class PerforateWarning(UserWarning):
    """Something worked, but probably not the way the user meant."""
