"""An online advantage and policy loss of your own, registered from a plugin file.

Name the file in a recipe (``plugins: [my_online_parts.py]``) or pass it with ``--plugin``, then choose the
parts by name:

    online:
      algorithm: grpo                 # the preset fills whatever is not set below
      advantage: group_median
      policy_loss: {name: tanh_ratio, scale: 1.0}

``alignkit online`` and ``alignkit compare --online`` both accept them; the property suite of alignkit's
tests runs over every registered part, plugins included.
"""

from __future__ import annotations

import torch
from pydantic import Field

from alignkit.online.parts import (
    AdvantageInputs,
    AdvantageOutput,
    PartConfig,
    PolicyLossInputs,
    PolicyLossOutput,
    broadcast,
    register_advantage,
    register_policy_loss,
)


@register_advantage("group_median", min_group_size=2)
def group_median(inputs: AdvantageInputs, cfg: PartConfig) -> AdvantageOutput:
    """Each completion's score minus its group's median (robust to one outlier reward).

    Formula::

        A_i = s_i - median_{j in group} s_j
    """
    grouped = inputs.scores.detach().float().view(-1, inputs.group_size)
    advantages = (grouped - grouped.median(dim=1, keepdim=True).values).reshape(-1)
    return AdvantageOutput(broadcast(advantages, inputs.mask))


class TanhRatioConfig(PartConfig):
    """Settings of :func:`tanh_ratio`."""

    scale: float = Field(1.0, gt=0, description="How far the ratio may move before the tanh saturates.")


def _tanh_bound(cfg: TanhRatioConfig) -> tuple[float, float]:
    rho = torch.linspace(0.0, 1.0 + 40.0 * cfg.scale, 100_001, dtype=torch.float64)
    weight = (1.0 - torch.tanh((rho - 1.0) / cfg.scale) ** 2) * rho  # d/dlog rho of scale * tanh((rho-1)/scale)
    peak = float(weight.max()) + 1e-3
    return peak, peak


@register_policy_loss("tanh_ratio", config=TanhRatioConfig, weight_bound=_tanh_bound)
def tanh_ratio(inputs: PolicyLossInputs, cfg: TanhRatioConfig) -> PolicyLossOutput:
    """A smooth trust region: the ratio enters through a tanh, so far-off tokens lose their gradient.

    Formula::

        rho_t = exp(log pi_t - log pi_old_t)
        l_t   = -A_t * scale * tanh((rho_t - 1) / scale)
    """
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    ratio = torch.exp(torch.where(m, logp - inputs.old_logps.detach().float(), zeros))
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    per_token = -adv * cfg.scale * torch.tanh((ratio - 1.0) / cfg.scale)
    return PolicyLossOutput(torch.where(m, per_token, zeros), torch.zeros_like(m), ratio.detach())
