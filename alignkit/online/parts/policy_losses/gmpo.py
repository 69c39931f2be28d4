"""GMPO: the geometric mean of a sequence's clipped token ratios in place of their arithmetic mean."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["GMPOConfig", "gmpo"]


class GMPOConfig(PartConfig):
    """Settings of :func:`gmpo` (the paper's clip range (e^-0.4, e^0.4), on log-ratios, token by token)."""

    clip_low: float = Field(0.4, gt=0, description="eps_low: a token's log-ratio is floored at -eps_low where A < 0.")
    clip_high: float = Field(0.4, gt=0, description="eps_high: a token's log-ratio is capped at eps_high where A > 0.")


@register_policy_loss("gmpo", config=GMPOConfig, weight_bound=lambda cfg: (math.exp(cfg.clip_high), float("inf")))
def gmpo(inputs: PolicyLossInputs, cfg: GMPOConfig) -> PolicyLossOutput:
    """Geometric-Mean Policy Optimization: a sequence's ratio is the geometric mean of its clipped token ratios.

    Zhao et al. 2025, "Geometric-Mean Policy Optimization". One outlier token ratio moves a geometric mean
    far less than an arithmetic one, so the clip range can be wider than GRPO's. Written in token form
    (like GSPO's): each token carries its sequence's ratio with the token's own gradient, so that with
    seq_mean_token_mean aggregation (the preset) and one advantage per sequence this is GMPO's loss and
    gradient; the clip follows each token's sign of A.

    Formula::

        d_i,t  = log pi_i,t - log pi_old_i,t
        d~_i,t = min(d_i,t, eps_high)  if A_i,t > 0,   max(d_i,t, -eps_low)  if A_i,t < 0
        R_i    = exp(1/|y_i| * sum_t d~_i,t)                 (the geometric mean of the clipped ratios)
        l_i,t  = -A_i,t * sg[R_i] * exp(d~_i,t - sg[d~_i,t])  (value -A R_i, gradient -A R_i grad log pi_i,t
                                                               where d_i,t is not clipped, 0 where it is)
    """
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    delta = torch.where(m, logp.detach() - inputs.old_logps.detach().float(), zeros)
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    lengths = m.sum(dim=1, keepdim=True).clamp(min=1)
    # The geometric-mean log-ratio of each row under either sign's clip: (B, 1) each.
    capped = torch.where(m, delta.clamp(max=cfg.clip_high), zeros).sum(dim=1, keepdim=True) / lengths
    floored = torch.where(m, delta.clamp(min=-cfg.clip_low), zeros).sum(dim=1, keepdim=True) / lengths
    positive = adv > 0
    log_ratio = torch.where(positive, capped, floored)  # (B, T)
    free = torch.where(positive, delta <= cfg.clip_high, delta >= -cfg.clip_low) & m
    ratio = torch.exp(log_ratio + torch.where(free, logp - logp.detach(), zeros))  # value R_i; gradient where free
    per_token = torch.where(m, -adv * ratio, zeros)
    return PolicyLossOutput(per_token, m & ~free, ratio.detach())
