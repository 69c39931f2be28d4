"""EXO (pairwise): reverse KL between the model's and the (smoothed) labels' preference over a pair."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

__all__ = ["EXOPairConfig", "exo_pair"]


class EXOPairConfig(LossConfig):
    """Parameters of :func:`exo_pair`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    epsilon: float = Field(
        1e-3, gt=0, lt=0.5, description="ε, label smoothing: the labels' preference is (1 − ε, ε)",
    )


@register_loss(
    "exo_pair", config=EXOPairConfig, needs_reference=True,
    description="EXO (pairwise): KL(σ(β·h) ‖ 1 − ε), the reverse KL to smoothed labels",
)
def exo_pair(stats: PreferenceStats, cfg: EXOPairConfig) -> LossOutput:
    """Efficient Exact Optimization on pairs: reverse KL from the model's pair preference to the labels'.

    Formula::

        h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl)),   p = σ(β·h)
        loss = p·(log p − log(1 − ε)) + (1 − p)·(log(1 − p) − log ε)
        rewards: β·(log π(y) − log π_ref(y))

    Mode-seeking: the minimum is at β·h = log((1 − ε)/ε), so past it the loss pulls the margin back.

    Reference: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    arXiv:2402.00856.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β and ε.

    Returns:
        (B,) losses (>= 0) and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "exo_pair")
    z = cfg.beta * (chosen - rejected)
    eps = cfg.epsilon
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )
    return LossOutput(losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())
