"""The error that stops a run."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, mismatched checkpoint, ...); the message says why."""


__all__ = ["TrainingError"]
