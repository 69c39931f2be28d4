"""Objectives: pure functions of per-sequence statistics, registered by name.

Importing this package registers every built-in loss (one module per objective family).
"""

from alignkit.losses import (  # noqa: F401  (imported for their @register_loss side effect)
    apo,
    bco,
    cpo,
    discopop,
    dpo,
    exo,
    hinge,
    ipo,
    kto,
    nca,
    orpo,
    reward,
    sft,
    simpo,
    slic,
    sppo,
)
from alignkit.losses.base import (
    LOSSES,
    LossConfig,
    LossOutput,
    LossSpec,
    LossState,
    PreferenceStats,
    get_loss,
    list_losses,
    register_loss,
)
from alignkit.losses.compose import LossTerm, Objective, ObjectiveError, ObjectiveState, build_objective

__all__ = [
    "LOSSES",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "LossState",
    "LossTerm",
    "Objective",
    "ObjectiveError",
    "ObjectiveState",
    "PreferenceStats",
    "build_objective",
    "get_loss",
    "list_losses",
    "register_loss",
]
