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

Every call runs under a time limit (:data:`REWARD_TIMEOUT_S` unless the caller sets one) in a thread of its own:
a reward that never returns, raises, or calls ``sys.exit`` stops the run with a :class:`RewardError` naming it,
instead of blocking it forever or ending it quietly.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from alignkit.registry import Registry
from alignkit.timing import phase

__all__ = [
    "REWARDS",
    "REWARD_TIMEOUT_S",
    "RewardError",
    "RewardFn",
    "checked_reward",
    "get_reward",
    "list_rewards",
    "register_reward",
    "require_finite",
    "resolve_reward",
]

RewardFn = Callable[[list[str]], list[float]]

REWARDS: Registry[RewardFn] = Registry("reward function")

# Seconds one call of a reward function may take (a batch of texts) unless the caller sets another limit.
REWARD_TIMEOUT_S = 300.0


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


def resolve_reward(reward: str | RewardFn, *, timeout_s: float | None = None) -> tuple[str, RewardFn]:
    """(name, function) for a registered name or a plain callable (named after its ``__name__``).

    The function returned is :func:`checked_reward`'s: one float per text, within ``timeout_s`` seconds
    (:data:`REWARD_TIMEOUT_S` when None).
    """
    if isinstance(reward, str):
        return reward, checked_reward(reward, get_reward(reward), timeout_s=timeout_s)
    if not callable(reward):
        raise TypeError(f"reward must be a registered name or a callable, got {type(reward).__name__}")
    name = getattr(reward, "__name__", "custom")
    return name, checked_reward(name, reward, timeout_s=timeout_s)


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


def require_finite(name: str, values: Sequence[float]) -> Sequence[float]:
    """``values`` when every one is finite; otherwise a :class:`RewardError` naming the reward and the text."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned {v} for text {i}; rewards must be finite numbers")
    return values


def _call_with_time_limit(name: str, fn: RewardFn, texts: list[str], timeout_s: float) -> Any:
    """``fn(texts)`` run in a daemon thread, waited for at most ``timeout_s`` seconds.

    A thread cannot be stopped: one that never returns is abandoned (a daemon thread does not keep the
    process alive) and the run stops with an error.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(texts)
        except BaseException as err:  # noqa: BLE001 - SystemExit too: a reward must not end the run quietly
            box["error"] = err

    thread = threading.Thread(target=target, name=f"reward {name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RewardError(f"reward {name!r} did not return within {timeout_s:g} s (scoring {len(texts)} texts)")
    if "error" in box:
        err = box["error"]
        if isinstance(err, RewardError):
            raise err
        if isinstance(err, SystemExit):
            raise RewardError(f"reward {name!r} called sys.exit({err.code!r}) while scoring {len(texts)} texts")
        raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err}") from err
    return box["value"]


def checked_reward(name: str, fn: RewardFn, *, timeout_s: float | None = None) -> RewardFn:
    """``fn`` under a time limit, its output checked and made a list of floats (a non-finite value is left to the
    caller: online training stops on it for every process at once, a judge counts the verdict invalid).

    Args:
        name: the reward's name, for messages.
        fn: ``texts -> rewards``.
        timeout_s: seconds one call may take; :data:`REWARD_TIMEOUT_S` (read at each call) when None.

    Raises (when called):
        RewardError: naming the reward, when it returns anything but one real number per text, does not return
            within ``timeout_s``, raises, or calls ``sys.exit``.
    """
    if getattr(fn, "_alignkit_checked", False):
        return fn

    def checked(texts: list[str]) -> list[float]:
        with phase("scoring"):  # the run's time table (alignkit.timing)
            limit = REWARD_TIMEOUT_S if timeout_s is None else timeout_s
            return _as_floats(name, _call_with_time_limit(name, fn, texts, limit), len(texts))

    checked.__name__ = getattr(fn, "__name__", name)
    checked.__doc__ = fn.__doc__
    checked._alignkit_checked = True  # type: ignore[attr-defined]
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
