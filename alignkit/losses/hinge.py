"""Hinge loss on the DPO margin (the RSO / SLiC-style margin loss with a reference model)."""

from __future__ import annotations

from pydantic import Field

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

__all__ = ["HingeConfig", "hinge"]


class HingeConfig(LossConfig):
    """Parameters of :func:`hinge`."""

    beta: float = Field(0.1, gt=0, description="β; the loss is zero once β·h reaches 1")


@register_loss(
    "hinge", config=HingeConfig, needs_reference=True,
    description="Hinge loss on the log-ratio margin: max(0, 1 − β·h) (RSO)",
)
def hinge(stats: PreferenceStats, cfg: HingeConfig) -> LossOutput:
    """Hinge loss on the reference-normalised margin, as in statistical rejection sampling (RSO).

    Formula::

        h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl))
        loss = max(0, 1 − β·h)
        rewards: β·(log π(y) − log π_ref(y))

    Reference: Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization",
    arXiv:2309.06657.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "hinge")
    losses = (1 - cfg.beta * (chosen - rejected)).clamp(min=0)
    return LossOutput(losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())
