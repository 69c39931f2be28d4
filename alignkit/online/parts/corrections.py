"""The registered rollout corrections: importance weights for the gap between the sampler and the trainer.

The sampler (the decoding loop, possibly in another precision or, later, another server) and the trainer's
forward give slightly different log-probs to the same tokens, so a rollout is slightly off-policy. With
w_t = exp(log pi_trainer_t - log pi_sampler_t), a correction returns a (B, T) detached weight that multiplies
each token's policy loss (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training"; the truncated and masked forms of verl and TRL).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from alignkit.online.parts.base import PartConfig, register_correction

__all__ = ["CapConfig", "mis", "no_correction", "seq_mask", "tis"]


class CapConfig(PartConfig):
    """The cap on the importance weight."""

    cap: float = Field(2.0, gt=0, description="The largest importance weight kept.")


def _log_weights(trainer_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> Tensor:
    delta = trainer_logps.detach().double() - sampler_logps.detach().double()
    return torch.where(mask, delta, torch.zeros_like(delta))


@register_correction("none", config=PartConfig)
def no_correction(trainer_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cfg: PartConfig) -> Tensor:
    """No correction: the rollout is taken as on-policy.

    Formula::

        c_t = 1
    """
    return mask.float()


@register_correction("tis", config=CapConfig)
def tis(trainer_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cfg: CapConfig) -> Tensor:
    """Truncated importance sampling, per token.

    Formula::

        c_t = min(w_t, cap)
    """
    w = torch.exp(_log_weights(trainer_logps, sampler_logps, mask))
    return torch.where(mask, w.clamp(max=cfg.cap), 0.0).float()


@register_correction("mis", config=CapConfig)
def mis(trainer_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cfg: CapConfig) -> Tensor:
    """Masked importance sampling, per token: a token whose weight passes the cap is dropped.

    Formula::

        c_t = w_t if w_t <= cap else 0
    """
    w = torch.exp(_log_weights(trainer_logps, sampler_logps, mask))
    return torch.where(mask & (w <= cfg.cap), w, 0.0).float()


@register_correction("seq_mask", config=CapConfig)
def seq_mask(trainer_logps: Tensor, sampler_logps: Tensor, mask: Tensor, cfg: CapConfig) -> Tensor:
    """Sequence-level masked importance sampling: one weight per sequence, the sequence dropped past the cap.

    Formula::

        W_i   = exp(sum_t (log pi_trainer_i,t - log pi_sampler_i,t))
        c_i,t = W_i if W_i <= cap else 0
    """
    w = torch.exp(_log_weights(trainer_logps, sampler_logps, mask).sum(dim=1, keepdim=True))
    return torch.where(mask & (w <= cfg.cap), w, 0.0).float()
