"""The errors a training run reports to its user, in a module with no heavy imports, so that the CLI can name
them (and choose exit codes) without importing torch first."""
from __future__ import annotations


class NonFiniteLossError(FloatingPointError):
    """A loss term or a weight became inf/NaN; the run dir was rolled back to finite weights."""


class RunDirError(RuntimeError):
    """The run directory cannot be created or written."""


class TrainingInterrupted(Exception):
    """A stop signal ended training at a step boundary, after a checkpoint; `signal` is its name."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal = signal_name
