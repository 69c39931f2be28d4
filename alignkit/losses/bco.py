"""BCO (pairwise): binary classification of each implicit reward against a fixed threshold δ."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

__all__ = ["BCOPairConfig", "bco_pair"]


class BCOPairConfig(LossConfig):
    """Parameters of :func:`bco_pair`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    delta: float = Field(
        0.0, description="δ, the fixed reward threshold (the paper uses a running mean of rewards)",
    )


@register_loss(
    "bco_pair", config=BCOPairConfig, needs_reference=True,
    description="BCO (pairwise): −log σ(r_w − δ) − log σ(δ − r_l) with a fixed threshold δ",
)
def bco_pair(stats: PreferenceStats, cfg: BCOPairConfig) -> LossOutput:
    """Binary Classifier Optimization on pairs, with a fixed reward shift δ.

    Formula::

        r(y) = β·(log π(y) − log π_ref(y))
        loss = −log σ(r(yw) − δ) − log σ(−(r(yl) − δ))
        rewards: r(yw), r(yl)

    The paper sets δ to a running mean of the rewards; a loss here is a pure function of one batch,
    so δ is a fixed parameter (0 by default).

    Reference: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv:2404.04656.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β and δ.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "bco_pair")
    r_w, r_l = cfg.beta * chosen, cfg.beta * rejected
    losses = -F.logsigmoid(r_w - cfg.delta) - F.logsigmoid(-(r_l - cfg.delta))
    return LossOutput(losses, r_w.detach(), r_l.detach())
