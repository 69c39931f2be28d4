"""DAPO's clip-higher: PPO's clipped surrogate with a wider upper clip."""

from __future__ import annotations

from pydantic import Field

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss
from alignkit.online.parts.policy_losses.ppo_clip import clipped_token_loss

__all__ = ["DAPOConfig", "dapo"]


class DAPOConfig(PartConfig):
    """Settings of :func:`dapo`."""

    clip_low: float = Field(0.2, gt=0, lt=1, description="eps_low: the ratio is clipped below at 1 - eps_low.")
    clip_high: float = Field(0.28, gt=0, description="eps_high: clipped above at 1 + eps_high (DAPO: 0.28).")


@register_policy_loss("dapo", config=DAPOConfig, weight_bound=lambda cfg: (1.0 + cfg.clip_high, float("inf")))
def dapo(inputs: PolicyLossInputs, cfg: DAPOConfig) -> PolicyLossOutput:
    """DAPO's decoupled clip (clip-higher); pair it with token_mean aggregation, as the preset does.

    Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale": a larger eps_high
    leaves room for low-probability tokens to rise (against entropy collapse).

    Formula::

        rho_t = exp(log pi_t - log pi_old_t)
        l_t   = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))
    """
    return clipped_token_loss(inputs, cfg.clip_low, cfg.clip_high, None)
