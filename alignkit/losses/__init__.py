"""Objectives: pure functions of per-sequence statistics, registered by name."""

from alignkit.losses.base import (
    LOSSES,
    LossConfig,
    LossOutput,
    LossSpec,
    PreferenceStats,
    get_loss,
    list_losses,
    register_loss,
)

__all__ = [
    "LOSSES",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "PreferenceStats",
    "get_loss",
    "list_losses",
    "register_loss",
]
