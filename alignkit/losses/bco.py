"""BCO: binary classification of each implicit reward against a threshold δ.

    bco_pair  on preference pairs, with a fixed δ
    bco       on unpaired examples (thumbs up or down), with δ the running mean of the rewards
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, LossState, PreferenceStats, register_loss
from alignkit.losses.batch_kinds import UNPAIRED
from alignkit.losses.functional import logratios, rewards_by_label, unpaired_logratios

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

__all__ = ["BCOConfig", "BCOPairConfig", "RewardShift", "bco", "bco_pair"]


class BCOPairConfig(LossConfig):
    """Parameters of :func:`bco_pair`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    delta: float = Field(
        0.0, description="δ, the fixed reward threshold (the paper uses a running mean of rewards)",
    )


@register_loss(
    "bco_pair", config=BCOPairConfig, needs_reference=True,
    description="BCO (pairwise): −log σ(r_w − δ) − log σ(δ − r_l) with a fixed threshold δ",
)
def bco_pair(stats: PreferenceStats, cfg: BCOPairConfig) -> LossOutput:
    """Binary Classifier Optimization on pairs, with a fixed reward shift δ.

    Formula::

        r(y) = β·(log π(y) − log π_ref(y))
        loss = −log σ(r(yw) − δ) − log σ(−(r(yl) − δ))
        rewards: r(yw), r(yl)

    The paper sets δ to a running mean of the rewards; a loss here is a pure function of one batch,
    so δ is a fixed parameter (0 by default).

    Reference: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β and δ.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "bco_pair")
    r_w, r_l = cfg.beta * chosen, cfg.beta * rejected
    losses = -F.logsigmoid(r_w - cfg.delta) - F.logsigmoid(-(r_l - cfg.delta))
    return LossOutput(losses, r_w.detach(), r_l.detach())


class BCOConfig(LossConfig):
    """Parameters of :func:`bco`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")


class RewardShift(LossState):
    """BCO's δ: the mean of every reward of the training batches of earlier optimizer steps (0 at first).

    A cumulative mean over all rewards seen, as TRL's ``RunningMoments`` keeps it; it moves after each
    optimizer step, so every micro-batch and process of one step uses the same δ.
    """

    def __init__(self) -> None:
        self.delta = 0.0
        self.count = 0.0

    def totals(self, stats: PreferenceStats, cfg: BCOConfig) -> torch.Tensor:
        rewards = cfg.beta * unpaired_logratios(stats, "bco")[0].detach()  # (B,)
        return torch.stack([rewards.sum(), torch.tensor(float(rewards.numel()), device=rewards.device)])

    def update(self, totals: torch.Tensor) -> None:
        total, count = (float(v) for v in totals.tolist())
        if count > 0:
            self.count += count
            self.delta += (total - count * self.delta) / self.count

    def to_json(self) -> dict[str, float]:
        return {"delta": self.delta, "count": self.count}

    def load_json(self, data: dict[str, float]) -> None:
        self.delta, self.count = float(data["delta"]), float(data["count"])


@register_loss(
    "bco", config=BCOConfig, needs_reference=True, inputs=UNPAIRED, state=RewardShift,
    description="BCO (unpaired): −log σ(r − δ) if desirable, −log σ(δ − r) if not; δ the running mean reward",
)
def bco(stats: PreferenceStats, cfg: BCOConfig, state: RewardShift) -> LossOutput:
    """Binary Classifier Optimization on unpaired examples, with the paper's reward shift δ.

    Formula::

        r(x, y) = β·(log π(y|x) − log π_ref(y|x))
        δ = mean of r over every training example of earlier steps   (0 before the first step)
        desirable:   loss = −log σ(r − δ)
        undesirable: loss = −log σ(−(r − δ))
        rewards: r;  metric delta: δ

    Each response is classified as desirable or not by its implicit reward; δ keeps the classifier's
    threshold at the rewards' running mean (a detached value, updated after each optimizer step and
    kept in checkpoints). The paper's optional density-ratio reweighting (UDM) is not included.

    Reference: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656.

    Args:
        stats: unpaired policy and reference log-probs and labels, each (B,).
        cfg: β.
        state: the running reward mean δ.

    Returns:
        (B,) losses, detached (B,) rewards by label and δ as metric ``delta``.
    """
    logratios, labels = unpaired_logratios(stats, "bco")
    rewards = cfg.beta * logratios
    shifted = rewards - state.delta
    losses = -F.logsigmoid(torch.where(labels, shifted, -shifted))
    chosen, rejected = rewards_by_label(rewards, labels)
    return LossOutput(losses, chosen, rejected, {"delta": torch.full_like(losses, state.delta).detach()})
