"""From a collated batch to the statistics a loss reads: the only place the model meets the objective.

The trainer never tests a loss by name: it asks the objective what it reads (`inputs`) and whether it needs
a reference, and computes exactly that.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from alignkit.losses import LossOutput, Objective, PreferenceStats
from alignkit.models.logps import (
    DEFAULT_LOGPS,
    LogpsOptions,
    chosen_rejected,
    concatenated_forward,
    reward_scores,
    sequence_logps,
)
from alignkit.models.reference import Reference

__all__ = ["objective_step", "preference_stats"]


def preference_stats(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    reference: Reference | None,
    *,
    logps: LogpsOptions = DEFAULT_LOGPS,
) -> PreferenceStats:
    """Run the policy (and, if the objective needs it, the reference) on one batch.

    Args:
        model: the policy (a causal LM), or the reward model for score-based objectives.
        batch: SFT batches (``collate_sft``) hold one row per example (B rows for B weights); preference
            batches (``collate_preference``) hold 2B rows, chosen first; K-way batches (``collate_kway``)
            hold B*K rows, each example's K candidates together.
        objective: what the loss reads (``objective.inputs``) and whether it needs a reference.
        reference: the reference log-probs, when the objective needs them.
        logps: chunk size and packing of the log-prob forwards.

    Returns:
        The statistics, each (B,) (K-way scores (B, K)).
    """
    if objective.inputs == "scores":
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (2B,)
        chosen, rejected = chosen_rejected(scores)  # (B,) each
        return PreferenceStats(chosen_scores=chosen, rejected_scores=rejected)
    if objective.inputs == "kway":
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (B*K,)
        k = int(batch["num_candidates"])
        return PreferenceStats(scores=rearrange(scores, "(b k) -> b k", k=k), best_index=batch["best_index"])
    if batch["input_ids"].shape[0] == batch["weights"].shape[0]:  # chosen responses only (SFT)
        sums, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=logps)
        return PreferenceStats(policy_chosen_logps=sums, chosen_lengths=lengths)
    out = concatenated_forward(model, batch, logps=logps)
    stats = PreferenceStats(
        policy_chosen_logps=out["chosen_logps"],
        policy_rejected_logps=out["rejected_logps"],
        chosen_lengths=out["chosen_lengths"],
        rejected_lengths=out["rejected_lengths"],
    )
    if objective.needs_reference:
        if reference is None:
            raise RuntimeError("the objective needs a reference model but none was configured")
        with torch.no_grad():
            stats.reference_chosen_logps, stats.reference_rejected_logps = reference.logps(batch)
    return stats


def objective_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    objective: Objective,
    reference: Reference | None,
    *,
    logps: LogpsOptions = DEFAULT_LOGPS,
) -> tuple[LossOutput, PreferenceStats]:
    """The objective's per-example output on one batch, and the statistics it was computed from."""
    stats = preference_stats(model, batch, objective, reference, logps=logps)
    return objective(stats), stats
