"""Supervised fine-tuning on the chosen response (also the first stage before DPO)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, require

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["SFTConfig", "sft"]


class SFTConfig(LossConfig):
    """:func:`sft` has no parameters; scale it inside a composition with ``weight``."""


@register_loss(
    "sft", config=SFTConfig, needs_reference=False,
    description="Supervised fine-tuning: token-mean NLL of the chosen response; reference-free",
)
def sft(stats: PreferenceStats, cfg: SFTConfig) -> LossOutput:
    """Supervised fine-tuning: the per-token mean negative log-likelihood of the chosen response.

    Formula::

        loss = −log π(yw) / |yw|
        rewards: log π(y) / |y|   (the rejected reward is 0 when no rejected response is given)

    The rejected response is never trained on. The DPO paper uses this as the stage before DPO.

    Reference: Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290 (SFT stage);
    Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
    arXiv:2203.02155.

    Args:
        stats: chosen log-probs and lengths (B,); rejected ones optional, for the logged rewards.
        cfg: no parameters.

    Returns:
        (B,) losses and detached (B,) per-token mean log-prob rewards.
    """
    pc, lc = require(stats, "sft", "policy_chosen_logps", "chosen_lengths")
    chosen = average_logps(pc, lc)
    if stats.policy_rejected_logps is not None and stats.rejected_lengths is not None:
        rejected = average_logps(stats.policy_rejected_logps, stats.rejected_lengths)
    else:
        rejected = torch.zeros_like(chosen)
    return LossOutput(-chosen, chosen.detach(), rejected.detach())
