"""ORPO: supervised fine-tuning plus an odds-ratio preference term, no reference model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, log1mexp, require

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["ORPOConfig", "orpo"]


class ORPOConfig(LossConfig):
    """Parameters of :func:`orpo`."""

    odds_ratio_weight: float = Field(
        0.1, ge=0, description="λ, weight of the odds-ratio term relative to the chosen NLL",
    )


@register_loss(
    "orpo", config=ORPOConfig, needs_reference=False,
    description="ORPO: token-mean NLL(yw) − λ·log σ(log odds(yw) − log odds(yl)); reference-free",
)
def orpo(stats: PreferenceStats, cfg: ORPOConfig) -> LossOutput:
    """Odds Ratio Preference Optimization: SFT on the chosen response plus a log-odds-ratio term.

    Formula::

        a(y) = log π(y) / |y|                          (per-token mean log-prob, <= 0)
        log odds(y) = a(y) − log(1 − exp(a(y)))
        loss = −a(yw) − λ·log σ(log odds(yw) − log odds(yl))
        rewards: λ·a(y)

    log(1 − exp(a)) is computed stably and with a capped at −1e−6, so a(yw) = 0 exactly (a response
    of probability one) gives a finite loss and finite gradients.

    Reference: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv:2403.07691.

    Args:
        stats: policy log-probs and response lengths, each (B,).
        cfg: λ.

    Returns:
        (B,) losses, detached (B,) rewards, metrics ``nll`` and ``log_odds_ratio``.
    """
    pc, pr, lc, lr = require(
        stats, "orpo", "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths"
    )
    a_w, a_l = average_logps(pc, lc), average_logps(pr, lr)
    log_odds_ratio = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))  # (B,)
    nll = -a_w
    losses = nll - cfg.odds_ratio_weight * F.logsigmoid(log_odds_ratio)
    return LossOutput(
        losses, (cfg.odds_ratio_weight * a_w).detach(), (cfg.odds_ratio_weight * a_l).detach(),
        {"nll": nll.detach(), "log_odds_ratio": log_odds_ratio.detach()},
    )
