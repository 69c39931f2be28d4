"""PPO's clipped surrogate, with asymmetric clip ranges and the dual clip."""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss

__all__ = ["PPOClipConfig", "clipped_token_loss", "ppo_clip"]


class PPOClipConfig(PartConfig):
    """Settings of :func:`ppo_clip`."""

    clip_low: float = Field(0.2, gt=0, lt=1, description="eps_low: the ratio is clipped below at 1 - eps_low.")
    clip_high: float | None = Field(None, gt=0, description="eps_high: clipped above at 1 + eps_high; null: clip_low.")
    dual_clip: float | None = Field(
        None, gt=1, description="c > 1: for A < 0 the loss is at most -c * A (Ye et al. 2020); null: off.")

    @property
    def high(self) -> float:
        return self.clip_high if self.clip_high is not None else self.clip_low

    @model_validator(mode="after")
    def _dual_above_band(self) -> PPOClipConfig:
        if self.dual_clip is not None and self.dual_clip <= 1 + self.high:
            raise ValueError(f"dual_clip={self.dual_clip:g} must exceed 1 + clip_high = {1 + self.high:g}")
        return self


def clipped_token_loss(inputs: PolicyLossInputs, low: float, high: float, dual: float | None,
                       log_ratio: torch.Tensor | None = None) -> PolicyLossOutput:
    """The clipped per-token loss of a ratio exp(``log_ratio``) (default log pi - log pi_old)."""
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    if log_ratio is None:
        log_ratio = torch.where(m, logp - inputs.old_logps.detach().float(), zeros)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    active = clipped > unclipped
    if dual is not None:
        capped = torch.minimum(per_token, -adv * dual)
        active = active | ((adv < 0) & (capped < per_token))
        per_token = torch.where(adv < 0, capped, per_token)
    return PolicyLossOutput(torch.where(m, per_token, zeros), active & m, ratio.detach())


def _bound(cfg: PPOClipConfig) -> tuple[float, float]:
    return 1.0 + cfg.high, cfg.dual_clip if cfg.dual_clip is not None else math.inf


@register_policy_loss("ppo_clip", config=PPOClipConfig, weight_bound=_bound)
def ppo_clip(inputs: PolicyLossInputs, cfg: PPOClipConfig) -> PolicyLossOutput:
    """PPO's clipped surrogate (asymmetric clip range, optional dual clip).

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; the dual clip from Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning".

    Formula::

        rho_t = exp(log pi_t - log pi_old_t)
        l_t   = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))
        l_t   = min(l_t, -c * A_t)      where A_t < 0 (dual clip c)

    The gradient vanishes where the clip decides: a token's weight never passes 1 + eps_high for A > 0,
    nor c for A < 0 with the dual clip.
    """
    return clipped_token_loss(inputs, cfg.clip_low, cfg.high, cfg.dual_clip)
