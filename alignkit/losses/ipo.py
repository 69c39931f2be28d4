"""Identity Preference Optimization: regress the log-ratio margin onto a fixed target 1/(2β)."""

from __future__ import annotations

from pydantic import Field

from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

__all__ = ["IPOConfig", "ipo"]


class IPOConfig(LossConfig):
    """Parameters of :func:`ipo`."""

    beta: float = Field(0.1, gt=0, description="β; the margin h is pulled towards 1/(2β)")
    average_log_prob: bool = Field(
        True,
        description="default true: per-token mean log-ratios (as TRL); false: summed log-ratios, "
        "the paper's sequence-level equation",
    )


@register_loss(
    "ipo", config=IPOConfig, needs_reference=True,
    description="Identity Preference Optimization: (h − 1/(2β))², token-averaged by default",
)
def ipo(stats: PreferenceStats, cfg: IPOConfig) -> LossOutput:
    """Identity Preference Optimization (IPO): squared regression of the margin onto 1/(2β).

    Formula::

        h = (log π(yw) − log π_ref(yw)) − (log π(yl) − log π_ref(yl))
        loss = (h − 1/(2β))²
        rewards: β·(log π(y) − log π_ref(y))

    Default: log-probs are per-token means (``average_log_prob: true``), as most libraries use it;
    ``average_log_prob: false`` uses summed log-probs, the sequence-level form of the paper. Unlike
    DPO the loss is not monotone in h: past the target it pulls the margin back down.

    Reference: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036.

    Args:
        stats: policy and reference log-probs and response lengths, each (B,).
        cfg: β and the averaging switch.

    Returns:
        (B,) losses and detached (B,) implicit rewards (from the same, averaged or summed, log-ratios).
    """
    chosen, rejected = logratios(stats, "ipo", average=cfg.average_log_prob)
    losses = (chosen - rejected - 1 / (2 * cfg.beta)) ** 2
    return LossOutput(losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())
