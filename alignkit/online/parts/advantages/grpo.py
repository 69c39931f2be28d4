"""GRPO's group-normalised advantage: each completion's score against its group's mean, in units of its std."""

from __future__ import annotations

from pydantic import Field

from alignkit.online.grpo import group_advantages
from alignkit.online.parts.base import (
    AdvantageInputs,
    AdvantageOutput,
    PartConfig,
    broadcast,
    register_advantage,
)

__all__ = ["GroupNormConfig", "grpo"]


class GroupNormConfig(PartConfig):
    """Settings of :func:`grpo`."""

    eps: float = Field(1e-4, ge=0, description="Added to the group's std (a constant group gets advantage 0).")


@register_advantage("grpo", min_group_size=2, centred="group", config=GroupNormConfig)
def grpo(inputs: AdvantageInputs, cfg: GroupNormConfig) -> AdvantageOutput:
    """Group-relative advantage, normalised by the group's std (GRPO).

    Shao et al. 2024, "DeepSeekMath", section 4.1. The std is the sample (n - 1) std, as TRL's.

    Formula::

        A_i = (s_i - mean_{j in group} s_j) / (std_{j in group} s_j + eps)      on every token of i

    s is the score: the reward, minus beta x the sequence KL when the KL sits in the reward.
    """
    return AdvantageOutput(broadcast(group_advantages(inputs.scores, inputs.group_size, True, cfg.eps), inputs.mask))
