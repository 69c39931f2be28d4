"""SLiC-HF: sequence likelihood calibration with a hinge on the policy's own log-probs."""

from __future__ import annotations

from pydantic import Field

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, require

__all__ = ["SLiCHFConfig", "slic_hf"]


class SLiCHFConfig(LossConfig):
    """Parameters of :func:`slic_hf`."""

    delta: float = Field(1.0, ge=0, description="δ, the margin log π(yw) must exceed log π(yl) by")
    sft_weight: float = Field(
        0.1, ge=0, description="λ, weight of the regulariser −log π(yw) on the chosen response (0 = off)",
    )
    average_log_prob: bool = Field(
        False,
        description="default false: summed log-probs in both terms, as in the paper; true: per-token means",
    )


@register_loss(
    "slic_hf", config=SLiCHFConfig, needs_reference=False,
    description="SLiC-HF: max(0, δ − log π(yw) + log π(yl)) − λ·log π(yw); reference-free",
)
def slic_hf(stats: PreferenceStats, cfg: SLiCHFConfig) -> LossOutput:
    """SLiC-HF: a rank-calibration hinge plus a likelihood regulariser on the chosen response.

    Formula::

        loss = max(0, δ − log π(yw) + log π(yl)) − λ·log π(yw)
        rewards: log π(y)

    The regulariser's target is the chosen response (the paper's "SFT target" variant). Log-probs
    are summed over tokens by default, as in the paper; ``average_log_prob: true`` uses per-token
    means in both terms (then λ weighs the token-mean NLL, like ``sft``). No reference model is read.

    Reference: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv:2305.10425.

    Args:
        stats: policy log-probs and response lengths, each (B,).
        cfg: δ, λ and the averaging switch.

    Returns:
        (B,) losses, detached (B,) log-prob rewards, and metrics ``hinge`` and ``sft_nll``.
    """
    chosen, rejected = require(stats, "slic_hf", "policy_chosen_logps", "policy_rejected_logps")
    if cfg.average_log_prob:
        lc, lr = require(stats, "slic_hf", "chosen_lengths", "rejected_lengths")
        chosen, rejected = average_logps(chosen, lc), average_logps(rejected, lr)
    hinge_term = (cfg.delta - chosen + rejected).clamp(min=0)
    losses = hinge_term - cfg.sft_weight * chosen
    return LossOutput(
        losses, chosen.detach(), rejected.detach(),
        {"hinge": hinge_term.detach(), "sft_nll": (-chosen).detach()},
    )
