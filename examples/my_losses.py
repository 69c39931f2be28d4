"""A user's own loss, kept outside alignkit and loaded as a plugin.

``sigmoid_hinge`` blends DPO's logistic loss with a hinge that asks for a fixed margin:

    h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl))
    loss = (1 − α)·(−log σ(β·h)) + α·max(0, m − β·h)

Use it from a recipe::

    plugins: [my_losses.py]            # relative to the recipe's folder
    loss: {name: sigmoid_hinge, beta: 0.1, alpha: 0.3, margin: 1.0}

or from the command line: ``alignkit run recipe.yaml --plugin examples/my_losses.py
loss.name=sigmoid_hinge``.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from alignkit.losses import LossConfig, LossOutput, PreferenceStats, register_loss

__all__ = ["SigmoidHingeConfig", "sigmoid_hinge"]


class SigmoidHingeConfig(LossConfig):
    """Parameters of :func:`sigmoid_hinge`: every field has a default, bounds and a description."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    alpha: float = Field(0.3, ge=0, le=1, description="α, share of the hinge term (0 = plain DPO)")
    margin: float = Field(1.0, ge=0, description="m, the reward margin the hinge asks for")


@register_loss("sigmoid_hinge", config=SigmoidHingeConfig, needs_reference=True)
def sigmoid_hinge(stats: PreferenceStats, cfg: SigmoidHingeConfig) -> LossOutput:
    """Blend of DPO's logistic loss and a margin hinge on the implicit reward margin.

    Formula::

        z = β·((log π(yw) − log π_ref(yw)) − (log π(yl) − log π_ref(yl)))
        loss = (1 − α)·(−log σ(z)) + α·max(0, m − z)
        rewards: β·(log π(y) − log π_ref(y))

    Args:
        stats: policy and reference log-probs, each (B,), already in fp32.
        cfg: β, α and m.

    Returns:
        (B,) per-example losses (never reduced), detached (B,) rewards, and the hinge as a metric.
    """
    chosen = stats.policy_chosen_logps - stats.reference_chosen_logps  # (B,)
    rejected = stats.policy_rejected_logps - stats.reference_rejected_logps  # (B,)
    z = cfg.beta * (chosen - rejected)
    hinge = (cfg.margin - z).clamp(min=0)
    losses = (1 - cfg.alpha) * -F.logsigmoid(z) + cfg.alpha * hinge
    return LossOutput(
        losses=losses,
        chosen_rewards=(cfg.beta * chosen).detach(),
        rejected_rewards=(cfg.beta * rejected).detach(),
        metrics={"hinge": hinge.detach()},
    )
