"""Accuracy on verifiable tasks: pass@1 and pass@k from n samples per held-out problem, with 95% intervals.

A completion is correct when the accuracy reward (``exact_match``, ``math_verify``, ``reasoning_gym``...) gives it
at least ``threshold``. pass@k is estimated without bias from n >= k samples per problem (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code", eq. 1), then averaged over problems; the interval is the
normal approximation over problems (:func:`alignkit.eval.stats.mean_ci`), clipped to [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from math import comb
from typing import Any

import numpy as np
from torch import nn

from alignkit.eval.stats import Interval, mean_ci
from alignkit.models.generate import generate_completions
from alignkit.models.rewards import RewardExample, require_finite, reward_total
from alignkit.models.sampling import Sampling

__all__ = ["evaluate_accuracy", "pass_at_k", "pass_at_k_interval"]

ExampleScore = Callable[[list[RewardExample]], Any]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Formula::

        pass@k = 1 - binom(n - c, k) / binom(n, k)        (1 when n - c < k)

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_interval(correct: Sequence[int], n: int, k: int) -> Interval:
    """pass@k over problems (``correct[i]`` of ``n`` samples of problem i were right), with its 95% interval."""
    ci = mean_ci([pass_at_k(n, c, k) for c in correct])
    return Interval(ci.estimate, max(0.0, ci.low), min(1.0, ci.high))


def evaluate_accuracy(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                      metadata: Mapping[str, Mapping[str, Any]], score: ExampleScore, sampling: Sampling, *,
                      ks: Sequence[int], threshold: float = 1.0, label: str = "policy") -> dict[str, Any]:
    """pass@k for every k of ``ks`` on ``prompts``, from ``sampling.samples_per_prompt`` samples of each.

    Args:
        model: the model sampled.
        prompts: P held-out problems; ``metadata[prompt]`` carries each one's reference answer.
        score: the accuracy reward, ``examples -> values``; a value >= ``threshold`` is correct.
        sampling: n samples per prompt (n >= max(ks)), their length, temperature and seed.

    Returns:
        ``{"label", "problems", "samples_per_problem", "pass_at": {"1": {estimate, low, high}, ...},
        "mean_length", "seconds"}``.
    """
    n = sampling.samples_per_prompt
    if not prompts:
        raise ValueError("no held-out problems to measure accuracy on")
    start = time.perf_counter()
    completions = generate_completions(model, tokenizer, list(prompts), sampling)
    examples = [RewardExample(prompts[c.prompt_index], c.text, metadata.get(prompts[c.prompt_index], {}))
                for c in completions]
    values = require_finite("accuracy reward", reward_total(score(examples)))
    correct = np.zeros(len(prompts), dtype=np.int64)
    for c, v in zip(completions, values, strict=True):
        correct[c.prompt_index] += int(v >= threshold)
    return {
        "label": label,
        "problems": len(prompts),
        "samples_per_problem": n,
        "pass_at": {str(k): pass_at_k_interval(correct.tolist(), n, k).to_dict() for k in ks},
        "mean_length": float(np.mean([c.num_tokens for c in completions])),
        "seconds": time.perf_counter() - start,
    }
