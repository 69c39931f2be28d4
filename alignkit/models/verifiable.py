"""Verifiable rewards: a completion checked against its prompt's reference answer, and shaping terms.

Every function here is registered with ``examples=True`` (it reads :class:`~alignkit.models.rewards.RewardExample`
s) and takes its settings as keyword arguments, which a recipe gives in ``online.rewards``::

    online:
      rewards:
        - {name: exact_match, weight: 1.0, extract: gsm8k}
        - {name: format, weight: 0.1, extract: gsm8k}
        - {name: overlong_penalty, weight: 1.0, max_length: 600, cache: 200}

The reference answer is the example's ``metadata["answer"]`` (the ``gsm8k_jsonl`` and ``reasoning_gym`` prompt
sources carry it). Answers are read by :mod:`alignkit.models.answers`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from alignkit.models.answers import MAX_ANSWER_CHARS, answers_equal, clean_text, extract_answer
from alignkit.models.rewards import RewardError, RewardExample, register_reward

__all__ = [
    "exact_match",
    "format_reward",
    "math_equal",
    "math_verify_reward",
    "overlong_penalty",
    "reasoning_gym_reward",
    "reasoning_gym_task",
    "reference_answer",
    "repeated_ngram_fraction",
    "repetition_penalty",
    "soft_overlong_penalty",
]


def reference_answer(example: RewardExample, reward: str) -> str:
    """The example's ``metadata["answer"]`` as text.

    Raises:
        RewardError: naming ``reward``, when the prompt source carries no reference answer.
    """
    answer = example.metadata.get("answer")
    if answer is None:
        raise RewardError(f"reward {reward!r} needs each prompt's reference answer (metadata 'answer'); use a "
                          "prompt source that carries one (prompts.kind gsm8k_jsonl or reasoning_gym)")
    return str(answer)


@register_reward("exact_match", examples=True)
def exact_match(examples: list[RewardExample], *, extract: str = "gsm8k", pattern: str | None = None) -> list[float]:
    """1 when the completion's answer (read as ``extract`` says) equals the reference after normalisation
    (``72.0`` = ``72`` = ``$72``), else 0; no answer, or two different ones, scores 0."""
    return [float(answers_equal(extract_answer(ex.completion, extract, pattern),
                                reference_answer(ex, "exact_match"))) for ex in examples]


@register_reward("format", examples=True)
def format_reward(examples: list[RewardExample], *, extract: str = "tags", pattern: str | None = None) -> list[float]:
    """1 when the completion states exactly one answer in the expected place (``extract``), else 0."""
    return [float(extract_answer(ex.completion, extract, pattern) is not None) for ex in examples]


def _quiet_math_verify() -> None:
    # math-verify warns on every call that its own signal-based timeout is off: the reward's thread has the limit.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def math_equal(answer: str, reference: str) -> bool:
    """Whether math-verify finds ``answer`` mathematically equal to ``reference`` (``\\frac12`` = ``0.5``).

    Answers longer than :data:`~alignkit.models.answers.MAX_ANSWER_CHARS` are compared as normalised text only.
    """
    if len(answer) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        return answers_equal(answer, reference)
    from math_verify import parse, verify

    _quiet_math_verify()
    # Its signal-based timeouts only work in the main thread; the reward's own time limit bounds the call.
    gold = parse(reference if "$" in reference else f"${reference}$", parsing_timeout=None)
    target = parse(answer, parsing_timeout=None)
    return bool(gold and target and verify(gold, target, timeout_seconds=None)) or answers_equal(answer, reference)


@register_reward("math_verify", examples=True, requires=("math_verify", "reasoning"))
def math_verify_reward(examples: list[RewardExample], *, extract: str = "boxed",
                       pattern: str | None = None) -> list[float]:
    """1 when the completion's answer is mathematically equal to the reference (math-verify), else 0.

    ``extract`` reads the answer first (default ``\\boxed{}``); ``extract: none`` hands the whole completion to
    math-verify, whose own parser takes the last boxed or plain expression.
    """
    out = []
    for ex in examples:
        reference = reference_answer(ex, "math_verify")
        answer = clean_text(ex.completion) if extract == "none" else extract_answer(ex.completion, extract, pattern)
        out.append(float(answer is not None and math_equal(answer, reference)))
    return out


def soft_overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to ``max_length - cache``, then falling
    linearly to -1 at ``max_length``, and -1 beyond.

    Formula::

        0                                  if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
        -1                                 if L > L_max
    """
    if not 0 < cache <= max_length:
        raise ValueError(f"overlong_penalty: need 0 < cache <= max_length, got cache={cache}, max_length={max_length}")
    start = max_length - cache
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / cache
    return -1.0


@register_reward("overlong_penalty", examples=True)
def overlong_penalty(examples: list[RewardExample], *, max_length: int = 512, cache: int = 128) -> list[float]:
    """:func:`soft_overlong_penalty` of each completion's length in characters (a reward sees text, not tokens)."""
    return [soft_overlong_penalty(len(ex.completion), max_length, cache) for ex in examples]


def repeated_ngram_fraction(text: str, n: int) -> float:
    """The share of the text's word n-grams that repeat an earlier one (0: none repeats; 0 for fewer than n words)."""
    words = clean_text(text).split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@register_reward("repetition_penalty", examples=True)
def repetition_penalty(examples: list[RewardExample], *, n: int = 3) -> list[float]:
    """Minus the share of repeated word n-grams: 0 for a text without repeats, towards -1 for a loop."""
    if n < 1:
        raise ValueError(f"repetition_penalty: n must be >= 1, got {n}")
    return [-repeated_ngram_fraction(ex.completion, n) for ex in examples]


@lru_cache(maxsize=16)
def _dataset(task: str, config_json: str) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(task, **json.loads(config_json))


def reasoning_gym_task(metadata: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The reasoning-gym dataset and item a prompt was generated from (its metadata names the task, the
    dataset's configuration and the item's index; the dataset is rebuilt once and cached)."""
    config = json.dumps(metadata["rg_config"], sort_keys=True, allow_nan=False)  # a cache key
    dataset = _dataset(str(metadata["rg_task"]), config)
    return dataset, dataset[int(metadata["rg_index"])]


@register_reward("reasoning_gym", examples=True, requires=("reasoning_gym", "reasoning"))
def reasoning_gym_reward(examples: list[RewardExample], *, extract: str = "tags",
                         pattern: str | None = None) -> list[float]:
    """The reasoning-gym task's own ``score_answer`` of the completion's answer (``<answer>...</answer>`` by
    default); no answer scores 0. Needs prompts from ``prompts.kind: reasoning_gym``."""
    out = []
    for ex in examples:
        if "rg_task" not in ex.metadata:
            raise RewardError("reward 'reasoning_gym' needs prompts generated by reasoning-gym "
                              "(prompts.kind: reasoning_gym)")
        dataset, entry = reasoning_gym_task(ex.metadata)
        answer = extract_answer(ex.completion, extract, pattern)
        out.append(float(dataset.score_answer(answer, entry)) if answer is not None else 0.0)
    return out
