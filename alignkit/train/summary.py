"""What a training stage reports: the typed summary every trainer returns and the report writer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StageSummary", "steps_per_second"]


@dataclass
class StageSummary:
    """One stage of a run (``sft``, ``preference``, ``online``, ``warp_iter0_run1``...), as report.json keeps it.

    Attributes:
        steps: optimizer steps done in all (a resumed stage counts the steps before the resume).
        wall_seconds: seconds this process spent training (not the steps done before a resume).
        steps_per_second: steps this process did per second, None when it did none.
        first_train_metrics: training metrics of the first logged step (online stages), else {}.
        last_train_metrics: training metrics of the last step (``eval/`` metrics left out).
        stopped_early: whether early stopping ended the stage.
        best_step: step of the best held-out metric, when early stopping tracks one.
        eval_before: held-out metrics at step 0, when measured.
        eval_after: held-out metrics at the end, when measured.
    """

    steps: int
    wall_seconds: float
    steps_per_second: float | None = None
    first_train_metrics: dict[str, float] = field(default_factory=dict)
    last_train_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    best_step: int | None = None
    eval_before: dict[str, float] | None = None
    eval_after: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_second(steps: int, resumed_at: int, wall_seconds: float) -> float | None:
    """Steps this process did per second (the steps before a resume are not its own); None if it did none."""
    done = steps - resumed_at
    return done / wall_seconds if done and wall_seconds else None
