"""Reward functions: a batch of texts in, one float per text out.

They score completions for evaluation (mean reward before and after training) and to build preference
pairs from a reward (best versus worst of several samples). Register your own with::

    @register_reward("length")
    def length(texts: list[str]) -> list[float]:
        return [float(len(t)) for t in texts]
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from alignkit.registry import Registry

__all__ = ["REWARDS", "RewardFn", "get_reward", "list_rewards", "register_reward", "resolve_reward"]

RewardFn = Callable[[list[str]], list[float]]

REWARDS: Registry[RewardFn] = Registry("reward function")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn(texts) -> rewards`` under ``name`` (a duplicate name is an error)."""

    def wrap(fn: RewardFn) -> RewardFn:
        return REWARDS.add(name, fn)

    return wrap


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``."""
    return REWARDS.get(name)


def list_rewards() -> list[str]:
    """Names of all registered reward functions, sorted."""
    return REWARDS.names()


def resolve_reward(reward: str | RewardFn) -> tuple[str, RewardFn]:
    """(name, function) for a registered name or a plain callable (named after its ``__name__``)."""
    if isinstance(reward, str):
        return reward, get_reward(reward)
    if not callable(reward):
        raise TypeError(f"reward must be a registered name or a callable, got {type(reward).__name__}")
    return getattr(reward, "__name__", "custom"), reward


@lru_cache(maxsize=1)
def _vader():
    # Built once, on first use: loading the lexicon takes ~50 ms and most runs never need it.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@register_reward("vader_sentiment")
def vader_sentiment(texts: list[str]) -> list[float]:
    """VADER's compound sentiment score of each text, in [-1, 1] (positive = happier)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]
