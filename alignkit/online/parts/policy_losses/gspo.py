"""GSPO: one importance ratio per sequence (the geometric mean of its token ratios), clipped per sequence."""

from __future__ import annotations

import torch
from pydantic import Field

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss
from alignkit.online.parts.policy_losses.ppo_clip import clipped_token_loss

__all__ = ["GSPOConfig", "gspo"]


class GSPOConfig(PartConfig):
    """Settings of :func:`gspo` (the paper's ranges: a sequence ratio moves far less than a token's)."""

    clip_low: float = Field(3e-4, gt=0, lt=1, description="eps_low of the sequence ratio.")
    clip_high: float = Field(4e-4, gt=0, description="eps_high of the sequence ratio.")


@register_policy_loss("gspo", config=GSPOConfig, weight_bound=lambda cfg: (1.0 + cfg.clip_high, float("inf")))
def gspo(inputs: PolicyLossInputs, cfg: GSPOConfig) -> PolicyLossOutput:
    """Group Sequence Policy Optimization: the sequence-level ratio (GSPO-token form).

    Zheng et al. 2025, "Group Sequence Policy Optimization". Each token carries its sequence's ratio with
    the token's own gradient; with seq_mean_token_mean aggregation (the preset) this is GSPO's loss.

    Formula::

        s_i   = exp(1/|y_i| * sum_t (log pi_i,t - log pi_old_i,t))
        s_i,t = sg[s_i] * pi_i,t / sg[pi_i,t]                 (value s_i, gradient s_i * grad log pi_i,t)
        l_i,t = max(-A_i,t * s_i,t, -A_i,t * clip(s_i,t, 1 - eps_low, 1 + eps_high))
    """
    m = inputs.mask
    logp = inputs.logps.float()
    delta = torch.where(m, logp.detach() - inputs.old_logps.detach().float(), torch.zeros_like(logp))
    sequence = delta.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1) mean log-ratio
    log_ratio = torch.where(m, sequence + logp - logp.detach(), torch.zeros_like(logp))
    return clipped_token_loss(inputs, cfg.clip_low, cfg.clip_high, None, log_ratio=log_ratio)
