"""Mean reward and KL to the reference on held-out prompts: the reward-versus-KL report.

Both figures come from the same samples of the evaluated model: the reward of each completion, and the
sample-based estimate of KL(policy || reference) (see :mod:`alignkit.models.kl`). Intervals are bootstrap
95% intervals over *prompts* (each prompt's samples are averaged first, since samples of one prompt are
not independent); the subsample spread is the WARP-style standard deviation over random halves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from alignkit.eval.stats import Interval, Spread, bootstrap_ci, subsample_spread
from alignkit.models.generate import Completion, ProgressFn, Sampling, eos_token_ids, generate_completions
from alignkit.models.kl import ReferenceFn, sequence_kl
from alignkit.models.rewards import RewardFn, require_finite, resolve_reward
from alignkit.timing import phase

__all__ = ["RewardKLReport", "evaluate_model_reward", "evaluate_proxy_and_true", "evaluate_reward_kl", "reward_gain"]

log = logging.getLogger(__name__)

# Two samples per prompt: the least that gives a per-prompt spread.
_DEFAULT = Sampling(samples_per_prompt=2)


@dataclass
class RewardKLReport:
    """Reward and KL of one model's samples on a prompt set.

    Attributes:
        label: what was evaluated ("reference", "policy", a run name).
        reward_name: the reward function's name.
        n_prompts: number of prompts P.
        samples_per_prompt: completions per prompt K.
        reward: mean reward with a bootstrap interval over prompts.
        kl: mean KL(policy || reference) in nats per sequence, with its interval (exactly 0 for the
            reference itself).
        reward_spread: mean and sd of the mean reward over random halves of the prompts.
        kl_spread: the same for the KL.
        mean_length: mean completion length in tokens (EOS included).
        finished_fraction: share of completions that ended with EOS before ``max_new_tokens``.
        per_prompt_reward: (P,) mean reward of each prompt's samples, in prompt order (for paired
            before/after comparisons, see :func:`reward_gain`).
        per_prompt_kl: (P,) mean KL of each prompt's samples.
        examples: a few samples: prompt, completion, reward, kl.
        seconds: wall time of generation, scoring and KL.
        settings: the sampling settings used.
    """

    label: str
    reward_name: str
    n_prompts: int
    samples_per_prompt: int
    reward: Interval
    kl: Interval
    reward_spread: Spread
    kl_spread: Spread
    mean_length: float
    finished_fraction: float
    per_prompt_reward: list[float]
    per_prompt_kl: list[float]
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of scored completions."""
        return self.n_prompts * self.samples_per_prompt

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for report.json."""
        return {
            "label": self.label,
            "reward_name": self.reward_name,
            "n_prompts": self.n_prompts,
            "samples_per_prompt": self.samples_per_prompt,
            "n": self.n,
            "reward": self.reward.to_dict(),
            "kl": self.kl.to_dict(),
            "reward_spread": self.reward_spread.to_dict(),
            "kl_spread": self.kl_spread.to_dict(),
            "mean_length": self.mean_length,
            "finished_fraction": self.finished_fraction,
            "per_prompt_reward": self.per_prompt_reward,
            "per_prompt_kl": self.per_prompt_kl,
            "examples": self.examples,
            "seconds": self.seconds,
            "settings": self.settings,
        }


def _per_prompt_means(values: np.ndarray, completions: Sequence[Completion], n_prompts: int) -> np.ndarray:
    """(P,) mean of ``values`` (one per completion) over each prompt's completions."""
    idx = np.array([c.prompt_index for c in completions])
    sums = np.bincount(idx, weights=values, minlength=n_prompts)
    counts = np.bincount(idx, minlength=n_prompts)
    return sums / np.maximum(counts, 1)


def _report(
    label: str,
    reward_name: str,
    prompts: Sequence[str],
    completions: list[Completion],
    rewards: np.ndarray,
    kls: np.ndarray,
    sampling: Sampling,
    n_examples: int,
    seconds: float,
) -> RewardKLReport:
    samples_per_prompt, seed = sampling.samples_per_prompt, sampling.seed
    reward_pp = _per_prompt_means(rewards, completions, len(prompts))
    kl_pp = _per_prompt_means(kls, completions, len(prompts))
    # One example from each of the first prompts, so the examples show different requests.
    examples = [
        {
            "prompt": prompts[c.prompt_index],
            "completion": c.text,
            "reward": float(rewards[i]),
            "kl": float(kls[i]),
        }
        for i, c in enumerate(completions)
        if i % samples_per_prompt == 0
    ][:n_examples]
    return RewardKLReport(
        label=label,
        reward_name=reward_name,
        n_prompts=len(prompts),
        samples_per_prompt=samples_per_prompt,
        reward=bootstrap_ci(reward_pp, seed=seed),
        kl=bootstrap_ci(kl_pp, seed=seed),
        reward_spread=subsample_spread(reward_pp, seed=seed),
        kl_spread=subsample_spread(kl_pp, seed=seed),
        mean_length=float(np.mean([c.num_tokens for c in completions])),
        finished_fraction=float(np.mean([c.finished for c in completions])),
        per_prompt_reward=[float(v) for v in reward_pp],
        per_prompt_kl=[float(v) for v in kl_pp],
        examples=examples,
        seconds=seconds,
        settings=sampling.to_dict(),
    )


def _sample_and_score(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    sampling: Sampling,
    progress: ProgressFn | None,
) -> tuple[list[Completion], np.ndarray]:
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    completions = generate_completions(model, tokenizer, prompts, sampling, progress=progress)
    with phase("scoring"):
        name = getattr(reward_fn, "__name__", "reward")
        rewards = np.asarray(require_finite(name, reward_fn([c.text for c in completions])), dtype=np.float64)
    if rewards.shape != (len(completions),):
        raise ValueError(f"reward function returned {rewards.shape[0]} values for {len(completions)} texts")
    return completions, rewards


def evaluate_reward_kl(
    policy: nn.Module,
    reference: nn.Module | ReferenceFn | Any,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: str | RewardFn,
    sampling: Sampling | None = None,
    *,
    n_examples: int = 3,
    label: str = "policy",
    progress: ProgressFn | None = None,
    **changes: Any,
) -> RewardKLReport:
    """Sample from ``policy`` on ``prompts``; report mean reward and KL(policy || reference).

    Args:
        policy: the tuned model.
        reference: the reference model, or a callable yielding it (see :mod:`alignkit.models.kl`).
        tokenizer: shared by both models.
        prompts: P held-out prompts.
        reward_fn: a registered reward name or a ``texts -> rewards`` callable.
        sampling: K samples per prompt, their length, temperature (keep 1, and ``top_p`` 1, for an unbiased
            KL estimate), batch size and seed (use the same one for the before and after evaluations).
            Default ``Sampling(samples_per_prompt=2)``.
        n_examples: example completions kept in the report.
        label: name of the evaluated model in the report.
        progress: optional ``fn(done, total)`` per generation batch.
        **changes: settings of ``sampling`` to change for this call.
    """
    start = time.perf_counter()
    reward_name, fn = resolve_reward(reward_fn)
    sampling = (sampling or _DEFAULT).but(**changes)
    if sampling.temperature != 1.0 or sampling.top_p != 1.0:
        log.warning(
            "KL is estimated from samples at temperature=%s, top_p=%s; it is an unbiased estimate of "
            "KL(policy || reference) only at temperature=1, top_p=1",
            sampling.temperature,
            sampling.top_p,
        )
    completions, rewards = _sample_and_score(policy, tokenizer, prompts, fn, sampling, progress)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(policy, tokenizer)[0]
    kls = sequence_kl(policy, reference, completions, batch_size=sampling.batch_size,
                      pad_token_id=pad_id).double().numpy()
    return _report(label, reward_name, prompts, completions, rewards, kls, sampling, n_examples,
                   time.perf_counter() - start)


def evaluate_proxy_and_true(
    model: nn.Module,
    reference: nn.Module | ReferenceFn | Any | None,
    tokenizer,
    prompts: Sequence[str],
    proxy: Callable[[list[str], list[str]], list[float]],
    true_reward: str | RewardFn,
    sampling: Sampling | None = None,
    *,
    label: str = "policy",
) -> dict[str, Any]:
    """The trained-on (proxy) reward and a true reward of the same samples of ``model``, and their KL.

    Args:
        proxy: ``score(prompts, texts)``, e.g. a reward model's scores (prompt i of text i).
        true_reward: a registered reward name or a ``texts -> rewards`` callable.
        reference: what KL is measured to; None: ``model`` is the reference (KL 0, no log-probs computed).

    Returns:
        ``{label, proxy_reward, true_reward, kl, n_prompts, samples_per_prompt}``, each figure a bootstrap
        95% interval over prompts (``Interval.to_dict()``), the KL in nats per completion.
    """
    true_name, true_fn = resolve_reward(true_reward)
    sampling = sampling or _DEFAULT
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    completions = generate_completions(model, tokenizer, prompts, sampling)
    texts = [c.text for c in completions]
    proxies = np.asarray(proxy([prompts[c.prompt_index] for c in completions], texts), dtype=np.float64)
    trues = np.asarray(require_finite(true_name, true_fn(texts)), dtype=np.float64)
    if proxies.shape != (len(texts),) or trues.shape != (len(texts),):
        raise ValueError(f"a reward returned {proxies.shape} / {trues.shape} values for {len(texts)} texts")
    if reference is None:
        kls = np.zeros(len(completions))
    else:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(model, tokenizer)[0]
        kls = sequence_kl(model, reference, completions, batch_size=sampling.batch_size,
                          pad_token_id=pad_id).double().numpy()
    n, seed = len(prompts), sampling.seed
    return {
        "label": label,
        "true_reward_name": true_name,
        "proxy_reward": bootstrap_ci(_per_prompt_means(proxies, completions, n), seed=seed).to_dict(),
        "true_reward": bootstrap_ci(_per_prompt_means(trues, completions, n), seed=seed).to_dict(),
        "kl": bootstrap_ci(_per_prompt_means(kls, completions, n), seed=seed).to_dict(),
        "n_prompts": n,
        "samples_per_prompt": sampling.samples_per_prompt,
    }


def evaluate_model_reward(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: str | RewardFn,
    sampling: Sampling | None = None,
    *,
    n_examples: int = 3,
    label: str = "reference",
    progress: ProgressFn | None = None,
    **changes: Any,
) -> RewardKLReport:
    """The "before" row: reward of the reference model's own samples; its KL to itself is 0.

    Arguments as :func:`evaluate_reward_kl`, without a reference (no log-probs are computed).
    """
    start = time.perf_counter()
    reward_name, fn = resolve_reward(reward_fn)
    sampling = (sampling or _DEFAULT).but(**changes)
    completions, rewards = _sample_and_score(model, tokenizer, prompts, fn, sampling, progress)
    kls = np.zeros(len(completions))
    return _report(label, reward_name, prompts, completions, rewards, kls, sampling, n_examples,
                   time.perf_counter() - start)


def reward_gain(
    before: RewardKLReport, after: RewardKLReport, n_resamples: int = 1000, seed: int = 0
) -> Interval:
    """Paired bootstrap interval of the mean reward change ``after - before`` over the same prompts.

    Pairing by prompt removes the prompt-to-prompt variance both evaluations share, so the interval is
    narrower than comparing the two separate intervals.
    """
    if before.n_prompts != after.n_prompts:
        raise ValueError(
            f"reports cover different prompt sets ({before.n_prompts} vs {after.n_prompts} prompts)"
        )
    diff = np.asarray(after.per_prompt_reward) - np.asarray(before.per_prompt_reward)
    return bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
