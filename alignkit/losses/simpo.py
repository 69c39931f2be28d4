"""SimPO: a reference-free sigmoid loss on length-normalised log-probs with a target margin."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, model_validator

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, require

__all__ = ["SimPOConfig", "simpo"]


class SimPOConfig(LossConfig):
    """Parameters of :func:`simpo`. Give the margin as ``gamma`` or as ``gamma_beta_ratio``, not both."""

    beta: float = Field(2.0, gt=0, description="β, scale of the length-normalised reward")
    gamma_beta_ratio: float = Field(
        0.5, ge=0, description="γ/β, the target margin relative to β (used unless gamma is given)",
    )
    gamma: float | None = Field(
        None, ge=0, description="γ, the target reward margin; overrides the default gamma_beta_ratio",
    )

    @model_validator(mode="after")
    def _one_margin(self) -> SimPOConfig:
        if self.gamma is not None and "gamma_beta_ratio" in self.model_fields_set:
            raise ValueError("give either gamma or gamma_beta_ratio, not both")
        return self

    @property
    def effective_gamma(self) -> float:
        """γ, from ``gamma`` when given, else β·``gamma_beta_ratio``."""
        return self.gamma if self.gamma is not None else self.beta * self.gamma_beta_ratio


@register_loss(
    "simpo", config=SimPOConfig, needs_reference=False,
    description="SimPO: −log σ(β·(avg log π(yw) − avg log π(yl)) − γ); reference-free",
)
def simpo(stats: PreferenceStats, cfg: SimPOConfig) -> LossOutput:
    """Simple Preference Optimization: length-normalised rewards, a target margin, no reference.

    Formula::

        a(y) = log π(y) / |y|            (per-token mean log-prob)
        loss = −log σ(β·(a(yw) − a(yl)) − γ),   γ = gamma or β·gamma_beta_ratio
        rewards: β·a(y)

    Reference: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734.

    Args:
        stats: policy log-probs and response lengths, each (B,).
        cfg: β and the margin.

    Returns:
        (B,) losses and detached (B,) rewards β·a(y).
    """
    pc, pr, lc, lr = require(
        stats, "simpo", "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths"
    )
    chosen = cfg.beta * average_logps(pc, lc)
    rejected = cfg.beta * average_logps(pr, lr)
    losses = -F.logsigmoid(chosen - rejected - cfg.effective_gamma)
    return LossOutput(losses, chosen.detach(), rejected.detach())
