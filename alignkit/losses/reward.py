"""Reward-model objectives: pairwise Bradley–Terry and K-way cross-entropy over scalar scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.batch_kinds import KWAY, SCORES
from alignkit.losses.functional import require

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["RewardBTConfig", "RewardKWayConfig", "reward_bt", "reward_kway"]


class RewardBTConfig(LossConfig):
    """Parameters of :func:`reward_bt`."""

    margin: float = Field(0.0, description="m, the score gap the chosen response should win by")
    center_coefficient: float = Field(
        0.0, ge=0, description="c, weight of (r_w + r_l)², which keeps scores centred on 0 (0 = off)",
    )


@register_loss(
    "reward_bt", config=RewardBTConfig, inputs=SCORES,
    description="Bradley–Terry reward model: −log σ(r_w − r_l − m) + c·(r_w + r_l)²",
)
def reward_bt(stats: PreferenceStats, cfg: RewardBTConfig) -> LossOutput:
    """Pairwise Bradley–Terry loss for a scalar reward model, with optional margin and centring.

    Formula::

        loss = −log σ(r_w − r_l − m) + c·(r_w + r_l)²
        rewards: r_w, r_l   (the model's scores)

    Per example, so the batch mean of the centring term is c·mean((r_w + r_l)²).

    References: Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs"; Ouyang et al.
    2022, arXiv:2203.02155 (reward model); margin: Touvron et al. 2023, "Llama 2", arXiv:2307.09288;
    centring: Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking", arXiv:2312.09244.

    Args:
        stats: ``chosen_scores`` and ``rejected_scores``, each (B,).
        cfg: margin and centring coefficient.

    Returns:
        (B,) losses and the detached (B,) scores as rewards.
    """
    r_w, r_l = require(stats, "reward_bt", "chosen_scores", "rejected_scores")
    losses = -F.logsigmoid(r_w - r_l - cfg.margin) + cfg.center_coefficient * (r_w + r_l) ** 2
    return LossOutput(losses, r_w.detach(), r_l.detach())


class RewardKWayConfig(LossConfig):
    """:func:`reward_kway` has no parameters."""


@register_loss(
    "reward_kway", config=RewardKWayConfig, inputs=KWAY,
    description="K-way reward model: cross-entropy over K candidates' scores, the best as label",
)
def reward_kway(stats: PreferenceStats, cfg: RewardKWayConfig) -> LossOutput:
    """K-way reward-model loss: softmax cross-entropy over K candidates with the best one as label.

    Formula::

        loss = −log softmax(r)[best] = −r_best + log Σ_k exp(r_k)
        rewards: chosen = r_best, rejected = mean of the other K − 1 scores

    With K = 2 it equals ``reward_bt`` with m = 0 and c = 0.

    Reference: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv:1909.08593.

    Args:
        stats: ``scores`` (B, K) with K >= 2 and ``best_index`` (B,) long.
        cfg: no parameters.

    Returns:
        (B,) losses and detached (B,) rewards.
    """
    scores, best = require(stats, "reward_kway", "scores", "best_index")
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"loss 'reward_kway' needs scores of shape (B, K >= 2), got {tuple(scores.shape)}")
    best = best.long().unsqueeze(1)  # (B, 1)
    losses = -scores.log_softmax(dim=-1).gather(1, best).squeeze(1)  # (B,)
    chosen = scores.gather(1, best).squeeze(1)
    rejected = (scores.sum(dim=1) - chosen) / (scores.shape[1] - 1)
    return LossOutput(losses, chosen.detach(), rejected.detach())


