"""NCA (pairwise): noise-contrastive alignment that optimises absolute, not relative, likelihoods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["NCAPairConfig", "nca_pair"]


class NCAPairConfig(LossConfig):
    """Parameters of :func:`nca_pair`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")


@register_loss(
    "nca_pair", config=NCAPairConfig, needs_reference=True,
    description="NCA (pairwise): −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l) on implicit rewards",
)
def nca_pair(stats: PreferenceStats, cfg: NCAPairConfig) -> LossOutput:
    """Noise Contrastive Alignment on pairs: each implicit reward is classified on its own.

    Formula::

        r(y) = β·(log π(y) − log π_ref(y))
        loss = −log σ(r(yw)) − ½·log σ(−r(yw)) − ½·log σ(−r(yl))
        rewards: r(yw), r(yl)

    The chosen reward is pushed up only while r(yw) < log 2 (beyond it the ½·log σ(−r(yw)) term wins),
    so the chosen likelihood is not driven up without bound.

    Reference: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards", arXiv:2402.05369.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "nca_pair")
    r_w, r_l = cfg.beta * chosen, cfg.beta * rejected
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return LossOutput(losses, r_w.detach(), r_l.detach())
