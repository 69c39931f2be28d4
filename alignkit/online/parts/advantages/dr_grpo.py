"""Dr. GRPO's advantage: each completion's score minus its group's mean, not divided by the std."""

from __future__ import annotations

from alignkit.online.grpo import group_advantages
from alignkit.online.parts.base import (
    AdvantageInputs,
    AdvantageOutput,
    PartConfig,
    broadcast,
    register_advantage,
)

__all__ = ["dr_grpo"]


@register_advantage("dr_grpo", min_group_size=2, centred="group", config=PartConfig)
def dr_grpo(inputs: AdvantageInputs, cfg: PartConfig) -> AdvantageOutput:
    """Group-mean baseline without the std (Dr. GRPO).

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective": dividing by the std
    weighs groups of near-equal rewards up; the centred score alone is unbiased.

    Formula::

        A_i = s_i - mean_{j in group} s_j      on every token of i
    """
    return AdvantageOutput(broadcast(group_advantages(inputs.scores, inputs.group_size, False), inputs.mask))
