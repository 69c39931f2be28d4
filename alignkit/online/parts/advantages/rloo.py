"""RLOO: each completion's score against the mean of the other completions of its prompt."""

from __future__ import annotations

from einops import rearrange

from alignkit.online.parts.base import (
    AdvantageInputs,
    AdvantageOutput,
    PartConfig,
    broadcast,
    register_advantage,
)
from alignkit.online.rloo import leave_one_out_advantages

__all__ = ["rloo"]


@register_advantage("rloo", config=PartConfig, centred="group", baseline_excludes_self=True)
def rloo(inputs: AdvantageInputs, cfg: PartConfig) -> AdvantageOutput:
    """Leave-one-out baseline (RLOO); with one sample per prompt, the batch mean.

    Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024, "Back to
    Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs".

    Formula::

        A_i = s_i - 1/(k - 1) * sum_{j in group, j != i} s_j      (k > 1)
        A_i = s_i - mean_{whole batch} s                          (k = 1, every process's samples)
    """
    batch_mean = None
    if inputs.group_size == 1:
        total, count = inputs.reduce([float(inputs.scores.double().sum()), float(inputs.scores.numel())])
        batch_mean = total / count
    by_prompt = rearrange(inputs.scores, "(p k) -> p k", k=inputs.group_size)
    advantages = rearrange(leave_one_out_advantages(by_prompt, batch_mean=batch_mean), "p k -> (p k)")
    return AdvantageOutput(broadcast(advantages, inputs.mask))
