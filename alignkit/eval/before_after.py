"""The evaluation step of a run: reward and KL of the reference (before) and the tuned policy (after).

Both are sampled on the same held-out prompts with the same seed, so the reward change is a paired
comparison (:func:`alignkit.eval.reward_kl.reward_gain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from torch import nn

from alignkit.eval.config import EvalConfig
from alignkit.eval.kl import ReferenceFn
from alignkit.eval.reward_kl import evaluate_model_reward, evaluate_reward_kl, reward_gain
from alignkit.progress import StepProgress

__all__ = ["evaluate_before_after"]


def evaluate_before_after(
    cfg: EvalConfig,
    policy: nn.Module,
    reference: ReferenceFn,
    tokenizer,
    prompts: Sequence[str],
    *,
    console: Console | None = None,
) -> dict[str, Any]:
    """Sample, score and measure KL for the reference and the policy on ``cfg.num_prompts`` prompts.

    Returns:
        A JSON-ready dict: reward name, prompts used, ``before`` and ``after`` reports and the paired
        ``reward_gain`` interval.
    """
    if cfg.reward is None:
        raise ValueError("eval.reward is not set: name a registered reward function, e.g. vader_sentiment")
    prompts = list(prompts)[: cfg.num_prompts]
    if not prompts:
        raise ValueError("no held-out prompts to evaluate on (data.test_size is 0?)")
    console = console or Console(stderr=True)
    console.print(f"eval: {cfg.samples_per_prompt} samples on each of {len(prompts)} held-out prompts from the "
                  f"reference, then the policy; reward {cfg.reward}, KL to the reference")
    with StepProgress(console, "eval: reference samples") as progress:
        with reference() as reference_model:
            before = evaluate_model_reward(reference_model, tokenizer, prompts, cfg.reward, cfg.sampling,
                                           label="reference", progress=progress.update)
        progress.update(0, description="eval: policy samples")
        after = evaluate_reward_kl(policy, reference, tokenizer, prompts, cfg.reward, cfg.sampling, label="policy",
                                   progress=progress.update)
    gain = reward_gain(before, after)
    return {
        "reward": before.reward_name,
        "n_prompts": len(prompts),
        "before": before.to_dict(),
        "after": after.to_dict(),
        "reward_gain": gain.to_dict(),
    }
