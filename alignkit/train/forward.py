"""From a collated batch to the statistics a loss reads: the only place the model meets the objective.

The trainer never tests a loss by name: it asks the objective which batch kind it reads (`inputs`) and whether
it needs a reference, and computes exactly that. Each kind's statistics function is attached to the kind here
(``@SCORES.computes_stats``); :func:`preference_stats` asks the kind.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from alignkit.losses import (
    KWAY,
    LOGPS,
    SCORES,
    UNPAIRED,
    LossOutput,
    Objective,
    ObjectiveState,
    PreferenceStats,
)
from alignkit.models.logps import (
    DEFAULT_LOGPS,
    LogpsOptions,
    chosen_rejected,
    concatenated_forward,
    reward_scores,
    sequence_logps,
)
from alignkit.models.reference import Reference
from alignkit.train.distributed import DistEnv, all_gather_cat

__all__ = ["objective_step", "preference_stats"]


def preference_stats(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    reference: Reference | None,
    *,
    logps: LogpsOptions = DEFAULT_LOGPS,
    pool: DistEnv | None = None,
) -> PreferenceStats:
    """Run the policy (and, if the objective needs it, the reference) on one batch.

    Args:
        model: the policy (a causal LM), or the reward model for score-based objectives.
        batch: SFT batches (``collate_sft``) hold one row per example (B rows for B weights); preference
            batches (``collate_preference``) hold 2B rows, chosen first; K-way batches (``collate_kway``)
            hold B*K rows, each example's K candidates together.
        objective: the batch kind the loss reads (``objective.inputs``) and whether it needs a reference.
        reference: the reference log-probs, when the objective needs them.
        logps: chunk size and packing of the log-prob forwards.
        pool: pool batch-level samples (the mismatched pairs of an unpaired batch) over these processes;
            only for training micro-batches, which every process runs alike (one all-gather each).

    Returns:
        The statistics, each (B,) (K-way scores (B, K)).
    """
    return objective.inputs.stats(model, batch, objective, reference, logps=logps, pool=pool)


@SCORES.computes_stats
def _score_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor], objective: Objective,
                 reference: Reference | None, logps: LogpsOptions, pool: DistEnv | None) -> PreferenceStats:
    """A reward model's scores of a preference batch's chosen and rejected sequences."""
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (2B,)
    chosen, rejected = chosen_rejected(scores)  # (B,) each
    return PreferenceStats(chosen_scores=chosen, rejected_scores=rejected)


@KWAY.computes_stats
def _kway_stats(model: torch.nn.Module, batch: dict[str, Any], objective: Objective,
                reference: Reference | None, logps: LogpsOptions, pool: DistEnv | None) -> PreferenceStats:
    """A reward model's scores of each example's K candidates, (B, K), and the best one's index."""
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (B*K,)
    k = int(batch["num_candidates"])
    return PreferenceStats(scores=rearrange(scores, "(b k) -> b k", k=k), best_index=batch["best_index"])


@LOGPS.computes_stats
def _logp_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor], objective: Objective,
                reference: Reference | None, logps: LogpsOptions, pool: DistEnv | None) -> PreferenceStats:
    """The policy's (and, when read, the reference's) summed log-probs of a preference or SFT batch."""
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


@UNPAIRED.computes_stats
def _unpaired_stats(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    reference: Reference | None,
    logps: LogpsOptions,
    pool: DistEnv | None,
) -> PreferenceStats:
    """Statistics of an unpaired batch (``collate_unpaired``: B completions after their prompts, then the
    same B after their mismatched prompts); the mismatched half only when the objective reads it."""
    b = batch["weights"].shape[0]
    if objective.needs_mismatched:  # one forward over both halves, like a preference batch
        out = concatenated_forward(model, batch, logps=logps)
        policy, lengths, mismatched = out["chosen_logps"], out["chosen_lengths"], out["rejected_logps"]
    else:
        policy, lengths = sequence_logps(model, batch["input_ids"][:b], batch["attention_mask"][:b],
                                         batch["labels"][:b], logps=logps)
        mismatched = None
    stats = PreferenceStats(policy_logps=policy, lengths=lengths, labels=batch["desirable"])
    reference_mismatched = None
    if objective.needs_reference:
        if reference is None:
            raise RuntimeError("the objective needs a reference model but none was configured")
        with torch.no_grad():
            stats.reference_logps, reference_mismatched = reference.logps(batch)
    if mismatched is not None:
        # Samples of a detached estimate, not examples: pooled over processes when asked, never trained on.
        stats.policy_mismatched_logps = _pooled(mismatched.detach(), pool)
        if reference_mismatched is not None:
            stats.reference_mismatched_logps = _pooled(reference_mismatched, pool)
    return stats


def _pooled(samples: torch.Tensor, pool: DistEnv | None) -> torch.Tensor:
    return all_gather_cat(samples, pool) if pool is not None else samples


def objective_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    objective: Objective,
    reference: Reference | None,
    *,
    logps: LogpsOptions = DEFAULT_LOGPS,
    state: ObjectiveState | None = None,
    pool: DistEnv | None = None,
) -> tuple[LossOutput, PreferenceStats]:
    """The objective's per-example output on one batch, and the statistics it was computed from.

    ``state`` holds the running values of stateful losses (read here, updated by the trainer); ``pool`` as
    in :func:`preference_stats`.
    """
    stats = preference_stats(model, batch, objective, reference, logps=logps, pool=pool)
    return objective(stats, state), stats
