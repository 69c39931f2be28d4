"""REINFORCE with the batch-mean baseline (any number of samples per prompt)."""

from __future__ import annotations

from alignkit.online.parts.base import (
    AdvantageInputs,
    AdvantageOutput,
    PartConfig,
    broadcast,
    register_advantage,
)

__all__ = ["reinforce"]


@register_advantage("reinforce", config=PartConfig, centred="batch")
def reinforce(inputs: AdvantageInputs, cfg: PartConfig) -> AdvantageOutput:
    """Score minus the mean score of the whole batch (REINFORCE with a batch baseline).

    Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning".

    Formula::

        A_i = s_i - 1/N * sum_j s_j      (N: every process's samples of the step)
    """
    total, count = inputs.reduce([float(inputs.scores.double().sum()), float(inputs.scores.numel())])
    return AdvantageOutput(broadcast(inputs.scores - total / count, inputs.mask))
