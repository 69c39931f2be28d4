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
    losses_reading,
    register_loss,
)
from alignkit.losses.batch_kinds import (
    BATCH_KINDS,
    KWAY,
    LOGPS,
    PAIR_KINDS,
    SCORES,
    UNPAIRED,
    BatchKind,
    batch_kind,
)
from alignkit.losses.compose import LossTerm, Objective, ObjectiveError, ObjectiveState, build_objective

__all__ = [
    "BATCH_KINDS",
    "KWAY",
    "LOGPS",
    "LOSSES",
    "PAIR_KINDS",
    "SCORES",
    "UNPAIRED",
    "BatchKind",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "LossState",
    "LossTerm",
    "Objective",
    "ObjectiveError",
    "ObjectiveState",
    "PreferenceStats",
    "batch_kind",
    "build_objective",
    "get_loss",
    "list_losses",
    "losses_reading",
    "register_loss",
]
