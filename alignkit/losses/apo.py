"""APO: anchored preference optimisation, which says which way each likelihood should move.

    apo_zero  raise the chosen and lower the rejected likelihood (chosen outputs better than the model's)
    apo_down  lower both, the rejected more (chosen outputs worse than the model's)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["APODownConfig", "APOZeroConfig", "apo_down", "apo_zero"]


class APOZeroConfig(LossConfig):
    """Parameters of :func:`apo_zero`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")


class APODownConfig(APOZeroConfig):
    """Parameters of :func:`apo_down` (the same as ``apo_zero``)."""


@register_loss(
    "apo_zero", config=APOZeroConfig, needs_reference=True,
    description="APO-zero: 1 − σ(r_w) + σ(r_l); raises the chosen, lowers the rejected likelihood",
)
def apo_zero(stats: PreferenceStats, cfg: APOZeroConfig) -> LossOutput:
    """Anchored Preference Optimization, "zero" anchor.

    Formula::

        r(y) = β·(log π(y) − log π_ref(y))
        loss = 1 − σ(r(yw)) + σ(r(yl))
        rewards: r(yw), r(yl)

    Reference: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", arXiv:2408.06266.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β.

    Returns:
        (B,) losses in [0, 2] and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "apo_zero")
    r_w, r_l = cfg.beta * chosen, cfg.beta * rejected
    losses = 1 - torch.sigmoid(r_w) + torch.sigmoid(r_l)
    return LossOutput(losses, r_w.detach(), r_l.detach())


@register_loss(
    "apo_down", config=APODownConfig, needs_reference=True,
    description="APO-down: σ(r_w) + 1 − σ(r_w − r_l); lowers both likelihoods, the rejected more",
)
def apo_down(stats: PreferenceStats, cfg: APODownConfig) -> LossOutput:
    """Anchored Preference Optimization, "down" anchor.

    Formula::

        r(y) = β·(log π(y) − log π_ref(y))
        loss = σ(r(yw)) + 1 − σ(r(yw) − r(yl))
        rewards: r(yw), r(yl)

    Reference: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", arXiv:2408.06266.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β.

    Returns:
        (B,) losses in [0, 2] and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "apo_down")
    r_w, r_l = cfg.beta * chosen, cfg.beta * rejected
    losses = torch.sigmoid(r_w) + 1 - torch.sigmoid(r_w - r_l)
    return LossOutput(losses, r_w.detach(), r_l.detach())
