"""CISPO: the policy gradient weighted by a clipped, detached importance ratio (no token is ever dropped)."""

from __future__ import annotations

import torch
from pydantic import Field

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss

__all__ = ["CISPOConfig", "cispo"]


class CISPOConfig(PartConfig):
    """Settings of :func:`cispo`."""

    clip_low: float | None = Field(None, gt=0, lt=1, description="eps_low: weights below 1 - eps_low are raised to it; null: no lower clip (the paper's setting).")
    clip_high: float = Field(4.0, gt=0, description="eps_high: weights above 1 + eps_high are cut to it.")


@register_policy_loss("cispo", config=CISPOConfig,
                      weight_bound=lambda cfg: (1.0 + cfg.clip_high, 1.0 + cfg.clip_high))
def cispo(inputs: PolicyLossInputs, cfg: CISPOConfig) -> PolicyLossOutput:
    """Clipped IS-weight Policy Optimization.

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention". Unlike PPO's
    clip, a token past the band keeps its gradient, with a bounded weight.

    Formula::

        rho_t = exp(log pi_t - log pi_old_t)
        l_t   = -sg[clip(rho_t, 1 - eps_low, 1 + eps_high)] * A_t * log pi_t
    """
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    ratio = torch.exp(torch.where(m, logp.detach() - inputs.old_logps.detach().float(), zeros))
    low = 1.0 - cfg.clip_low if cfg.clip_low is not None else 0.0
    weight = ratio.clamp(min=low, max=1.0 + cfg.clip_high)
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    per_token = torch.where(m, -weight * adv * logp, zeros)
    return PolicyLossOutput(per_token, (weight != ratio) & m, ratio)
