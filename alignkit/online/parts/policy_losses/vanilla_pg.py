"""The plain policy gradient: -A * log pi on every token."""

from __future__ import annotations

import torch

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss

__all__ = ["vanilla_pg"]


@register_policy_loss("vanilla_pg", config=PartConfig, weight_bound=lambda cfg: (1.0, 1.0))
def vanilla_pg(inputs: PolicyLossInputs, cfg: PartConfig) -> PolicyLossOutput:
    """The REINFORCE policy gradient, on-policy (no ratio, no clip); RLOO and REINFORCE use it.

    Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning".

    Formula::

        l_t = -A_t * log pi_t      (gradient -A_t * grad log pi_t)
    """
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    ratio = torch.exp(torch.where(m, logp.detach() - inputs.old_logps.detach().float(), zeros))
    return PolicyLossOutput(torch.where(m, -adv * logp, zeros), torch.zeros_like(m), ratio)
