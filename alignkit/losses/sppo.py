"""SPPO (hard labels): regress each log-ratio onto ±1/(2β), a win-probability of 1 or 0."""

from __future__ import annotations

from pydantic import Field

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

__all__ = ["SPPOHardConfig", "sppo_hard"]


class SPPOHardConfig(LossConfig):
    """Parameters of :func:`sppo_hard`."""

    beta: float = Field(0.1, gt=0, description="β; the log-ratios are pulled towards ±1/(2β)")


@register_loss(
    "sppo_hard", config=SPPOHardConfig, needs_reference=True,
    description="SPPO (hard): (log-ratio(yw) − 1/(2β))² + (log-ratio(yl) + 1/(2β))²",
)
def sppo_hard(stats: PreferenceStats, cfg: SPPOHardConfig) -> LossOutput:
    """Self-Play Preference Optimization with hard win probabilities (1 for chosen, 0 for rejected).

    Formula::

        ρ(y) = log π(y) − log π_ref(y)
        loss = (ρ(yw) − 1/(2β))² + (ρ(yl) + 1/(2β))²
        rewards: β·ρ(y)

    Each response is regressed on its own target, so (like IPO) the loss is not monotone: it pulls a
    log-ratio back once it passes its target.

    Reference: Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
    arXiv:2405.00675.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "sppo_hard")
    target = 1 / (2 * cfg.beta)
    losses = (chosen - target) ** 2 + (rejected + target) ** 2
    return LossOutput(losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())
