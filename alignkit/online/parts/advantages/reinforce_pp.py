"""REINFORCE++: per-token returns with the KL penalty on every token, normalised over the global batch."""

from __future__ import annotations

import torch
from pydantic import Field

from alignkit.online.parts.base import AdvantageInputs, AdvantageOutput, PartConfig, register_advantage
from alignkit.online.ppo import masked_moments, whiten

__all__ = ["ReinforcePPConfig", "reinforce_pp"]


class ReinforcePPConfig(PartConfig):
    """Settings of :func:`reinforce_pp`."""

    group_baseline: bool = Field(
        False, description="Subtract each group's mean reward first (REINFORCE++-baseline); false: plain REINFORCE++.")


@register_advantage("reinforce_pp", config=ReinforcePPConfig)
def reinforce_pp(inputs: AdvantageInputs, cfg: ReinforcePPConfig) -> AdvantageOutput:
    """REINFORCE++: the return-to-go of per-token KL-penalised rewards, whitened over the global batch.

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models" (OpenRLHF).
    No critic; the global normalisation replaces GRPO's per-prompt one.

    Formula::

        b_i   = mean_{j in group} R_j      (group_baseline), else 0
        G_i,t = (R_i - b_i) - beta * sum_{u >= t} kl_i,u
        A_i,t = (G_i,t - mean(G)) / sqrt(var(G) + 1e-8)      over every process's tokens
    """
    mask = inputs.mask
    rewards = inputs.rewards.detach().double()
    if cfg.group_baseline:
        grouped = rewards.view(-1, inputs.group_size)
        rewards = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    kl = torch.where(mask, inputs.token_kl.detach().double(), 0.0)
    to_go = kl.flip(1).cumsum(1).flip(1)  # sum over u >= t
    returns = torch.where(mask, rewards.to(mask.device).unsqueeze(1) - inputs.kl_coef * to_go, 0.0).float()
    moments = inputs.reduce(masked_moments(returns, mask))
    return AdvantageOutput(whiten(returns, mask, moments=(moments[0], moments[1], moments[2])))
