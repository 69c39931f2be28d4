"""Preference pairs from a reward: the controlled-sentiment protocol of the DPO paper, offline.

Prompts are the built-in neutral ones of :mod:`alignkit.data.sentiment_prompts` (no sentiment built into
the prompt), with a fixed, hash-based split that keeps evaluation prompts out of training. For each prompt
the reference model samples K completions, a reward function (VADER sentiment by default) scores them,
and the best and worst become the chosen and rejected responses.

Generation is the slow part, so the sampled completions are cached (:mod:`alignkit.data.sample_cache`:
one JSON line per prompt, written atomically) under a key of the model's weights, the tokenizer, the
prompts, the sampling settings and the seed; a rerun only re-scores them (microseconds a text) and
rebuilds the pairs, so the reward and ``min_reward_gap`` may change without generating again.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from alignkit.data.config import DataConfig, SentimentSource
from alignkit.data.reward_pairs import SMALL_GAP, RewardPairs, best_versus_worst, score_completions
from alignkit.data.sample_cache import (
    cache_file,
    model_fingerprint,
    read_cache,
    sampling_settings,
    write_cache,
)
from alignkit.data.sentiment_prompts import (
    SENTIMENT_PROMPTS,
    SENTIMENT_SUBJECTS,
    SENTIMENT_TEMPLATES,
    is_eval_prompt,
    sentiment_prompts,
)
from alignkit.data.sources import PrepareContext, register_prepared_source
from alignkit.data.tokenize import tokenize_pairs
from alignkit.data.types import DataError, DropReport, PreferenceExample, PreparedData
from alignkit.models.generate import ProgressFn, Sampling, generate_completions, uses_chat_template
from alignkit.models.precision import resolve_precision
from alignkit.models.rewards import RewardFn, resolve_reward
from alignkit.progress import StepProgress

__all__ = [
    "SENTIMENT_PROMPTS",
    "SENTIMENT_SUBJECTS",
    "SENTIMENT_TEMPLATES",
    "SMALL_GAP",
    "RewardPairs",
    "build_reward_pairs",
    "is_eval_prompt",
    "make_sentiment_pairs",
    "prepare_sentiment_data",
    "model_fingerprint",
    "sentiment_prompts",
]

log = logging.getLogger(__name__)


def _checked_sampling(sampling: Sampling | None, changes: dict[str, Any]) -> Sampling:
    """``sampling`` (default: 4 samples per prompt) with ``changes``, able to sample a best and a worst."""
    sampling = (sampling or Sampling(samples_per_prompt=4)).but(**changes)
    k, temperature = sampling.samples_per_prompt, sampling.temperature
    if k < 2:
        raise ValueError(f"completions_per_prompt must be >= 2 to pick a best and a worst, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample different completions, got {temperature}")
    return sampling


def _sample(model: nn.Module, tokenizer, prompts: Sequence[str], sampling: Sampling,
            generation_dtype: torch.dtype | None, progress: ProgressFn | None) -> list[list[str]]:
    """(P, K) completion texts, sampled from ``model`` (or a copy of it in ``generation_dtype``)."""
    sampler = model
    if generation_dtype is not None and generation_dtype != next(model.parameters()).dtype:
        sampler = copy.deepcopy(model).to(generation_dtype)
    completions = generate_completions(sampler, tokenizer, prompts, sampling, progress=progress)
    k = sampling.samples_per_prompt
    return [[c.text for c in completions[i * k : (i + 1) * k]] for i in range(len(prompts))]


def _cached_or_sampled(model: nn.Module, tokenizer, prompts: Sequence[str], sampling: Sampling, *, use_cache: bool,
                       cache_dir: Path | None, model_id: str | None, generation_dtype: torch.dtype | None,
                       progress: ProgressFn | None) -> tuple[list[list[str]], bool, Path | None]:
    """(P, K) completion texts read from the cache, or sampled (and cached); whether read; the cache file."""
    settings = sampling_settings(sampling, chat=bool(sampling.use_chat_template), generation_dtype=generation_dtype)
    path = None
    if use_cache:
        path = cache_file(model, tokenizer, prompts, settings, model_id=model_id, cache_dir=cache_dir)
        texts = read_cache(path, prompts, sampling.samples_per_prompt)
        if texts is not None:
            return texts, True, path
    texts = _sample(model, tokenizer, prompts, sampling, generation_dtype, progress)
    if path is not None:
        write_cache(path, prompts, texts, {"model_id": model_id, **settings})
    return texts, False, path


def build_reward_pairs(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    sampling: Sampling | None = None,
    *,
    reward: str | RewardFn = "vader_sentiment",
    min_reward_gap: float = 0.0,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    model_id: str | None = None,
    progress: ProgressFn | None = None,
    generation_dtype: torch.dtype | None = None,
    **changes: Any,
) -> RewardPairs:
    """Sample K completions per prompt, score them, keep best versus worst (see the module docstring).

    Args:
        model: the reference model that samples (put in eval mode for the call).
        tokenizer: its tokenizer.
        prompts: P prompts (training split).
        sampling: K >= 2 samples per prompt (``samples_per_prompt``, default 4) at a temperature > 0 (K
            greedy copies would be identical); its ``use_chat_template`` (None = when the tokenizer has one)
            makes the pairs conversations (user prompt, assistant responses).
        reward: a registered reward name or a ``texts -> rewards`` callable.
        min_reward_gap: keep a prompt only when best - worst reward is strictly above this.
        cache_dir: folder of the completion cache; None = ``<alignkit cache>/reward_pairs``.
        use_cache: False never reads or writes the cache.
        model_id: a name to key the cache by instead of the weights' fingerprint.
        progress: optional ``fn(done, total)`` per generation batch.
        generation_dtype: sample from a temporary copy of the model in this dtype (``torch.bfloat16``
            about doubles CPU sampling speed on CPUs with bf16 units); None samples from ``model``.
        **changes: settings of ``sampling`` to change for this call.

    Returns:
        The pairs and their statistics. Chosen is the first best sample, rejected the last worst one.
    """
    sampling = _checked_sampling(sampling, changes)
    if not prompts:
        raise ValueError("no prompts to make pairs from")
    start = time.perf_counter()
    reward_name, reward_fn = resolve_reward(reward)
    chat = uses_chat_template(tokenizer, sampling.use_chat_template)
    texts, from_cache, path = _cached_or_sampled(
        model, tokenizer, prompts, sampling.but(use_chat_template=chat), use_cache=use_cache, cache_dir=cache_dir,
        model_id=model_id, generation_dtype=generation_dtype, progress=progress)
    scores = score_completions(reward_fn, reward_name, texts)  # (P, K)
    picked = best_versus_worst(prompts, texts, scores, min_reward_gap=min_reward_gap, chat=chat)
    result = RewardPairs(
        pairs=picked.pairs,
        drops=picked.drops,
        reward_name=reward_name,
        mean_reward=float(scores.mean()),
        mean_chosen_reward=picked.mean_chosen_reward,
        mean_rejected_reward=picked.mean_rejected_reward,
        mean_gap=picked.mean_gap,
        from_cache=from_cache,
        seconds=time.perf_counter() - start,
        cache_path=path,
        rewards=scores.tolist(),
    )
    log.info("%s", result.summary())
    return result


def make_sentiment_pairs(*args: Any, **kwargs: Any) -> list[PreferenceExample]:
    """The pairs of :func:`build_reward_pairs` (same arguments), for callers that need only the data.

    Use :func:`build_reward_pairs` to get the drop counts and reward statistics as values too.
    """
    return build_reward_pairs(*args, **kwargs).pairs


def _heldout_sentiment_prompts(cfg: DataConfig) -> tuple[list[str], dict[str, str]]:
    """The held-out prompts of a sentiment section (generated data has no chosen response)."""
    src = cfg.source
    assert isinstance(src, SentimentSource)
    return sentiment_prompts(src.num_eval_prompts, seed=cfg.seed, split="eval"), {}


@register_prepared_source("sentiment", needs_model=True, heldout=_heldout_sentiment_prompts)
def _prepare_sentiment_source(cfg: DataConfig, tokenizer: Any, context: PrepareContext) -> PreparedData:
    assert context.model is not None
    return prepare_sentiment_data(cfg, tokenizer, context.model, seed=context.seed, console=context.console)


def _pair_prompts(cfg: DataConfig, src: SentimentSource) -> tuple[list[str], list[str]]:
    """The training prompts (``num_prompts`` capped by ``max_examples``) and the held-out ones."""
    # max_examples caps the prompts (one pair each) without ever asking for more than the split holds.
    n_train = src.num_prompts
    if cfg.max_examples is not None:
        n_train = min(n_train or len(sentiment_prompts(split="train")), cfg.max_examples)
    return (sentiment_prompts(n_train, seed=cfg.seed, split="train"),
            sentiment_prompts(src.num_eval_prompts, seed=cfg.seed, split="eval"))


def _pairs_with_progress(model: nn.Module, tokenizer, prompts_and_gaps: dict[str, tuple[list[str], float]],
                         sampling: Sampling, src: SentimentSource, generation_dtype: torch.dtype | None,
                         console: Console) -> dict[str, RewardPairs]:
    """:func:`build_reward_pairs` of each named prompt list with its ``min_reward_gap``, under a progress bar."""
    results = {}
    for name, (prompts, gap) in prompts_and_gaps.items():
        total = len(prompts) * src.completions_per_prompt
        with StepProgress(console, f"sentiment pairs ({name}): sampling", total) as progress:
            results[name] = build_reward_pairs(
                model, tokenizer, prompts, sampling, reward=src.reward, min_reward_gap=gap, use_cache=src.use_cache,
                generation_dtype=generation_dtype,
                progress=progress.update,
            )
            progress.update(total)
    for name, result in results.items():
        console.print(f"sentiment {name}: {result.summary()}")
    return results


def _generation_dtype(requested: str, model: nn.Module, console: Console | None = None) -> torch.dtype | None:
    """``data.source.generation_dtype`` on the model's device: auto is the decoding phase's choice
    (:func:`~alignkit.models.precision.resolve_precision`: bf16 where it measured faster than fp32), else None
    (the model as loaded); the choice and its reason are printed to ``console``."""
    if requested != "auto":
        return getattr(torch, requested)
    choice = resolve_precision("auto", next(model.parameters()).device, phase="decoding")
    if console is not None:
        console.print(choice.line())
    return choice.autocast_dtype


def prepare_sentiment_data(
    cfg: DataConfig,
    tokenizer,
    model: nn.Module,
    *,
    seed: int = 0,
    console: Console | None = None,
    generation_dtype: torch.dtype | None = None,
) -> PreparedData:
    """A recipe's ``data:`` section with a ``sentiment`` source: generate, score, pair and tokenize.

    Training pairs come from ``num_prompts`` prompts of the training split (capped by
    ``max_examples``); test pairs from ``num_eval_prompts`` held-out prompts. Test pairs keep every
    held-out prompt, ties included (``min_reward_gap`` applies to training only), so the reward
    evaluation, which samples from the test pairs' prompts, sees the whole held-out set.

    Args:
        cfg: the data section; ``cfg.source`` must be a :class:`SentimentSource`.
        tokenizer: the model's tokenizer.
        model: the initial policy, which is the reference that samples.
        seed: sampling seed (the recipe's seed); ``cfg.seed`` orders the prompts.
        console: where progress is shown (stderr when None).
        generation_dtype: see :func:`build_reward_pairs`; default: ``cfg.source.generation_dtype``.
    """
    src = cfg.source
    if not isinstance(src, SentimentSource):
        raise DataError(f"data.source.kind must be 'sentiment' here, got {src.kind!r}")
    if model is None:
        raise DataError("data.source.kind 'sentiment' needs the model to sample completions from")
    if generation_dtype is None and src.generation_dtype:
        generation_dtype = _generation_dtype(src.generation_dtype, model, console)
    train_prompts, eval_prompts = _pair_prompts(cfg, src)
    sampling = Sampling(samples_per_prompt=src.completions_per_prompt, max_new_tokens=src.max_new_tokens,
                        temperature=src.temperature, top_p=src.top_p, batch_size=src.batch_size, seed=seed,
                        use_chat_template=cfg.chat_template)
    results = _pairs_with_progress(
        model, tokenizer, {"train": (train_prompts, src.min_reward_gap), "test": (eval_prompts, float("-inf"))},
        sampling, src, generation_dtype, console or Console(stderr=True))
    train_ex, test_ex = results["train"].pairs, results["test"].pairs
    load_report = DropReport().merge(results["train"].drops).merge(results["test"].drops)
    train, train_report = tokenize_pairs(train_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template,
                                         prompt_truncation=cfg.prompt_truncation)
    test, test_report = tokenize_pairs(
        test_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template, start_index=len(train_ex),
        prompt_truncation=cfg.prompt_truncation,
    )
    if not train:
        raise DataError(
            f"no usable training pairs from data.source (sentiment):\nloading: {load_report.summary()}\n"
            f"tokenization: {train_report.summary()}"
        )
    return PreparedData(train, test, train_ex, test_ex, load_report, train_report, test_report)
