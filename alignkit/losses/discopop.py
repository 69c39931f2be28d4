"""DiscoPOP: a discovered blend of the logistic (DPO) and exponential losses, gated by the margin."""

from __future__ import annotations

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

__all__ = ["DiscoPOPConfig", "discopop"]


class DiscoPOPConfig(LossConfig):
    """Parameters of :func:`discopop`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    tau: float = Field(0.05, gt=0, description="τ, temperature of the sigmoid gate between the two losses")


@register_loss(
    "discopop", config=DiscoPOPConfig, needs_reference=True,
    description="DiscoPOP: log-ratio modulated blend of −log σ(β·h) and exp(−β·h)",
)
def discopop(stats: PreferenceStats, cfg: DiscoPOPConfig) -> LossOutput:
    """DiscoPOP (log-ratio modulated loss), found by LLM-driven objective discovery.

    Formula::

        h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl)),   z = β·h
        g = σ(z/τ)
        loss = (1 − g)·(−log σ(z)) + g·exp(−z)
        rewards: β·(log π(y) − log π_ref(y))

    g·exp(−z) is evaluated as exp(log σ(z/τ) − z), finite for any z. The paper notes the loss is not
    convex; near z = 0 it even increases with the margin.

    Reference: Chan et al. 2024, "Discovering Preference Optimization Algorithms with and for Large
    Language Models", arXiv:2406.08414.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β and τ.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    chosen, rejected = logratios(stats, "discopop")
    z = cfg.beta * (chosen - rejected)
    gated_logistic = torch.sigmoid(-z / cfg.tau) * F.softplus(-z)  # (1 − g)·(−log σ(z))
    gated_exp = torch.exp(F.logsigmoid(z / cfg.tau) - z)  # g·exp(−z), in log space
    return LossOutput(gated_logistic + gated_exp, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())
