"""From a collated batch to the statistics a loss reads: the only place the model meets the objective.

The trainer never tests a loss by name: it asks the objective what it reads (`inputs`) and whether it needs
a reference, and computes exactly that.
"""

from __future__ import annotations

from typing import Any

import torch

from alignkit.losses import LossOutput, Objective, PreferenceStats
from alignkit.models.logps import concatenated_forward, reward_scores, sequence_logps
from alignkit.models.reference import Reference

__all__ = ["preference_stats", "objective_step"]


def preference_stats(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    reference: Reference | None,
    *,
    chunk_size: int = 1024,
    padding_free: bool = True,
) -> PreferenceStats:
    """Run the policy (and, if the objective needs it, the reference) on one batch.

    SFT batches (``collate_sft``) hold one row per example (B rows for B weights); preference batches
    (``collate_preference``) hold 2B rows, chosen first.
    """
    if objective.inputs == "scores":
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (2B,)
        b = scores.shape[0] // 2
        return PreferenceStats(chosen_scores=scores[:b], rejected_scores=scores[b:])
    if objective.inputs == "kway":
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (B*K,)
        k = int(batch["num_candidates"])
        return PreferenceStats(scores=scores.view(-1, k), best_index=batch["best_index"])
    if batch["input_ids"].shape[0] == batch["weights"].shape[0]:  # chosen responses only (SFT)
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        chunk_size=chunk_size, padding_free=padding_free)
        return PreferenceStats(policy_chosen_logps=logps, chosen_lengths=lengths)
    out = concatenated_forward(model, batch, chunk_size=chunk_size, padding_free=padding_free)
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
    chunk_size: int = 1024,
    padding_free: bool = True,
) -> tuple[LossOutput, PreferenceStats]:
    stats = preference_stats(model, batch, objective, reference, chunk_size=chunk_size, padding_free=padding_free)
    return objective(stats), stats
