"""Reward functions: a batch of texts in, one float per text out.

They score completions for evaluation (mean reward before and after training), to build preference
pairs from a reward (best versus worst of several samples) and as the reward of online training
(``online.reward``). Register your own with::

    @register_reward("length")
    def length(texts: list[str]) -> list[float]:
        return [float(len(t)) for t in texts]

in alignkit or in a plugin file a recipe names under ``plugins:`` (see examples/my_reward.py). A function
may return a list, a tuple, a 1-D array or tensor: :func:`checked_reward` turns it into floats, or names the
reward when it is not one number per text.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from alignkit.registry import Registry
from alignkit.timing import phase

__all__ = [
    "REWARDS",
    "RewardError",
    "RewardFn",
    "checked_reward",
    "get_reward",
    "list_rewards",
    "register_reward",
    "resolve_reward",
]

RewardFn = Callable[[list[str]], list[float]]

REWARDS: Registry[RewardFn] = Registry("reward function")


class RewardError(ValueError):
    """A reward function that did not return one real number per text; the message names it."""


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


def _as_floats(name: str, values: Any, n: int) -> list[float]:
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy array, torch tensor
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} must return a list of numbers (one per text), got {type(values).__name__}")
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} texts (one number per text)")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise RewardError(f"reward {name!r} returned {v!r} ({type(v).__name__}) for text {i}; expected a number")
    return [float(v) for v in values]


def checked_reward(name: str, fn: RewardFn) -> RewardFn:
    """``fn`` whose output is checked and made a list of floats (a non-finite value is left to the caller).

    Raises (when called):
        RewardError: naming the reward, when it returns anything but one real number per text.
    """

    def checked(texts: list[str]) -> list[float]:
        with phase("scoring"):  # the run's time table (alignkit.timing)
            return _as_floats(name, fn(texts), len(texts))

    checked.__name__ = getattr(fn, "__name__", name)
    checked.__doc__ = fn.__doc__
    return checked


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
