"""The metrics an offline stage logs, their accumulation, and the log: metrics.jsonl and the trackers open.

:func:`batch_metrics` is where the per-example metric names of a training or evaluation batch come from;
:func:`stage_metric_names` lists, through that same function, the names a stage logs for an objective, so
the recipe rule that checks ``early_stopping.metric`` accepts exactly what the trainer writes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.cache import check_inside, writing
from alignkit.jsonio import RunFileError, read_jsonl, to_json
from alignkit.losses import LossOutput, Objective, PreferenceStats
from alignkit.train.distributed import DistEnv, all_reduce_sum
from alignkit.train.trackers import log_scalars

__all__ = [
    "STEP_METRICS",
    "MetricSums",
    "MetricsWriter",
    "StageMetricNames",
    "TIE_MARGIN",
    "batch_metrics",
    "pair_accuracy",
    "stage_metric_names",
    "step_metrics",
]

STEP_METRICS = ("tokens_per_second", "grad_norm", "learning_rate", "step_seconds")
"""What each optimizer step adds to the batch metrics of its training record (none in an ``eval/`` record)."""


# Margins within this of 0 are ties. Before training, when the policy is the reference, every margin is 0
# up to float rounding (~1e-6): counting those by sign reported accuracies far from 0.5 (0.11 on real HH).
TIE_MARGIN = 1e-4


def pair_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when the chosen response's reward is ahead by more than :data:`TIE_MARGIN`, 0 when
    behind by more, 1/2 for a tie."""
    ahead = (margins > TIE_MARGIN).float()
    tied = (margins.abs() <= TIE_MARGIN).float()
    return ahead + 0.5 * tied


def batch_metrics(out: LossOutput, stats: PreferenceStats) -> dict[str, torch.Tensor]:
    """The per-example metrics of one batch besides ``loss`` (which is weighted), each (B,), by name.

    ``rewards/chosen`` always; the rest of ``rewards/*`` for paired batches (a rejected response or K
    candidates: an SFT batch has nothing to compare with); ``logps/*`` for the log-probs the batch has;
    then the loss's own metrics. An unpaired batch has no pairs to compare: ``rewards/chosen`` and
    ``logps/chosen`` hold its desirable examples' values, ``*/rejected`` its undesirable ones' (so fewer
    than B values each).
    """
    if stats.labels is not None:
        return _unpaired_metrics(out, stats, stats.labels.bool())
    metrics = {"rewards/chosen": out.chosen_rewards}
    if any(x is not None for x in (stats.policy_rejected_logps, stats.rejected_scores, stats.scores)):
        metrics["rewards/rejected"] = out.rejected_rewards
        metrics["rewards/margins"] = out.chosen_rewards - out.rejected_rewards
        metrics["rewards/accuracies"] = pair_accuracy(metrics["rewards/margins"])
    if stats.policy_chosen_logps is not None:
        metrics["logps/chosen"] = stats.policy_chosen_logps
    if stats.policy_rejected_logps is not None:
        metrics["logps/rejected"] = stats.policy_rejected_logps
    metrics.update(out.metrics)
    return metrics


def _unpaired_metrics(out: LossOutput, stats: PreferenceStats, desirable: torch.Tensor) -> dict[str, torch.Tensor]:
    metrics = {"rewards/chosen": out.chosen_rewards[desirable], "rewards/rejected": out.rejected_rewards[~desirable]}
    if stats.policy_logps is not None:
        metrics["logps/chosen"] = stats.policy_logps[desirable]
        metrics["logps/rejected"] = stats.policy_logps[~desirable]
    metrics.update(out.metrics)
    return metrics


def step_metrics(*, tokens_per_second: float, grad_norm: float, learning_rate: float,
                 step_seconds: float) -> dict[str, float]:
    """The :data:`STEP_METRICS` of one optimizer step, by name."""
    values = (tokens_per_second, grad_norm, learning_rate, step_seconds)
    return dict(zip(STEP_METRICS, values, strict=True))


@dataclass(frozen=True)
class StageMetricNames:
    """The metric names an offline stage writes to metrics.jsonl (besides ``stage`` and ``step``).

    Attributes:
        train: the names of a training record: ``loss``, the batch metrics, :data:`STEP_METRICS`.
        eval: the names of a held-out record: ``eval/`` + ``loss`` and the batch metrics.
        complete: False when the objective failed on made-up statistics (a plugin loss may), so that its
            own metrics are not listed; the other names are.
    """

    train: tuple[str, ...]
    eval: tuple[str, ...]
    complete: bool


def stage_metric_names(objective: Objective, *, paired: bool) -> StageMetricNames:
    """The metric names a stage training ``objective`` logs, found by :func:`batch_metrics` itself.

    The objective runs once on a made-up batch (no model), and its output goes through the function the
    trainer accumulates with.

    Args:
        objective: the stage's objective.
        paired: whether the stage's batches are paired (preference pairs, K-way) rather than SFT batches.
    """
    def made_up() -> PreferenceStats:  # fresh each time: a plugin loss may have changed the first in place
        return objective.inputs.made_up_stats(needs_reference=objective.needs_reference,
                                              needs_mismatched=objective.needs_mismatched, paired=paired)

    try:
        with torch.no_grad():
            stats = made_up()
            names, complete = list(batch_metrics(objective(stats), stats)), True
    except Exception:  # noqa: BLE001 - a plugin loss may not accept made-up numbers; its own names are unknown
        stats = made_up()
        zeros = torch.zeros(2)
        names, complete = list(batch_metrics(LossOutput(zeros, zeros, zeros), stats)), False
    per_batch = ["loss", *names]
    return StageMetricNames(train=(*per_batch, *STEP_METRICS), eval=tuple(f"eval/{n}" for n in per_batch),
                            complete=complete)


class MetricSums:
    """Weighted sums of per-example metrics across micro-batches and processes; ``means()`` divides."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, float] = defaultdict(float)

    def add(self, name: str, values: torch.Tensor) -> None:
        values = values.detach().float()
        self._sums[name] += float(values.sum())
        self._counts[name] += values.numel()

    def add_total(self, name: str, value: float, count: float) -> None:
        self._sums[name] += value
        self._counts[name] += count

    def means(self, env: DistEnv) -> dict[str, float]:
        names = sorted(self._sums)
        if env.enabled:
            packed = torch.tensor([[self._sums[n], self._counts[n]] for n in names], dtype=torch.float64)
            all_reduce_sum(packed, env)
            return {n: float(s / c) for n, (s, c) in zip(names, packed.tolist(), strict=True) if c}
        # A metric no example contributed to (an unpaired batch without undesirable examples) is left out.
        return {n: self._sums[n] / self._counts[n] for n in names if self._counts[n]}


def _step_of(record: dict[str, Any], path: Path) -> int:
    step = record.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool):
        raise RunFileError(f"{path}: not a metrics record: step {step!r} is not an integer")
    return step


class MetricsWriter:
    """Appends one JSON object a line to ``metrics.jsonl``; sends each record's scalars to the experiment
    trackers a run opened (:func:`alignkit.train.trackers.tracking`)."""

    def __init__(self, path: Path, *, enabled: bool = True, resume_from_step: int | None = None) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        check_inside(path)
        if resume_from_step is not None and path.exists():
            # Drop what was logged after the checkpoint we resume from (the resumed run logs it again), and
            # a last line a kill tore in half; any other bad line is an error naming it.
            records = read_jsonl(path, what="a metrics record", torn_tail=True)
            kept = [record for record in records if _step_of(record, path) <= resume_from_step]
            with writing(path) as f:
                f.write("".join(to_json(record, indent=None) + "\n" for record in kept))
        elif resume_from_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = to_json(record, indent=None) + "\n"
        with writing(self.path, "a", needed_bytes=len(line)) as f:
            f.write(line)
        log_scalars(str(record.get("stage", "train")), int(record.get("step", 0)), record)
