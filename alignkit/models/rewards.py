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

A reward that needs more than the text (a verifiable reward checks a completion against its prompt's
reference answer) is registered with ``examples=True`` and receives :class:`RewardExample` s: the prompt, the
completion and the metadata its prompt source carries::

    @register_reward("says_answer", examples=True)
    def says_answer(examples: list[RewardExample]) -> list[float]:
        return [float(ex.metadata["answer"] in ex.completion) for ex in examples]

:func:`resolve_example_reward` gives any reward (text-only or not) as a function of examples, so text-only
rewards work unchanged wherever examples are scored; :func:`resolve_reward` (texts only) refuses a reward
that reads examples, naming it. A reward may also return a :class:`RewardBreakdown` (its total and the
components it is made of) so that each component is logged on its own.

Every call runs under a time limit (:data:`REWARD_TIMEOUT_S` unless the caller sets one) in a thread of its own:
a reward that never returns, raises, or calls ``sys.exit`` stops the run with a :class:`RewardError` naming it,
instead of blocking it forever or ending it quietly.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from alignkit.registry import Registry
from alignkit.timing import phase

__all__ = [
    "REWARDS",
    "REWARD_TIMEOUT_S",
    "ExampleRewardFn",
    "RewardBreakdown",
    "RewardError",
    "RewardExample",
    "RewardFn",
    "checked_reward",
    "get_reward",
    "installed",
    "list_rewards",
    "reads_examples",
    "register_reward",
    "require_extra",
    "require_finite",
    "reward_total",
    "unknown_settings",
    "resolve_example_reward",
    "resolve_reward",
]

RewardFn = Callable[[list[str]], list[float]]


@dataclass(frozen=True)
class RewardExample:
    """What a reward that reads examples receives for one completion.

    Attributes:
        prompt: the prompt as the sampler received it.
        completion: the sampled text.
        metadata: what the prompt's source carries with it (``answer``: a reference answer; a reasoning-gym
            prompt also names its task and item); empty for sources that carry nothing.
    """

    prompt: str
    completion: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RewardBreakdown:
    """A reward's values and the named components they were combined from (each logged on its own).

    Attributes:
        total: one reward per completion.
        components: component name -> one value per completion.
    """

    total: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)


ExampleRewardFn = Callable[[list[RewardExample]], Any]

REWARDS: Registry[RewardFn] = Registry("reward function")

# Seconds one call of a reward function may take (a batch of texts) unless the caller sets another limit.
REWARD_TIMEOUT_S = 300.0


class RewardError(ValueError):
    """A reward function that did not return one real number per text; the message names it."""


def register_reward(name: str, *, examples: bool = False,
                    requires: tuple[str, str] | None = None) -> Callable[[Any], Any]:
    """Decorator: register ``fn(texts) -> rewards`` under ``name`` (a duplicate name is an error).

    Args:
        name: the name recipes use.
        examples: the function reads :class:`RewardExample` s (prompt, completion, metadata) instead of texts.
        requires: (module, extra): an optional package the function imports and the alignkit extra that
            installs it; a run that names the reward without it stops at once with an error naming the extra.
    """

    def wrap(fn: Any) -> Any:
        if examples:
            fn._alignkit_examples = True
        if requires is not None:
            fn._alignkit_requires = requires
        return REWARDS.add(name, fn)

    return wrap


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (a None entry in ``sys.modules`` blocks it)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def require_extra(module: str, extra: str, what: str) -> None:
    """Raise a :class:`RewardError` naming ``alignkit[extra]`` when ``module`` cannot be imported.

    Args:
        module: the package's import name (found without importing it).
        extra: the alignkit extra that installs it.
        what: what needs it, for the message (``reward 'math_verify'``).
    """
    if not installed(module):
        raise RewardError(f"{what} needs the {module} package, which is not installed: "
                          f"pip install 'alignkit[{extra}]'")


def reads_examples(fn: Any) -> bool:
    """Whether a reward function was registered to read :class:`RewardExample` s rather than texts."""
    return bool(getattr(fn, "_alignkit_examples", False))


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
        fn = get_reward(reward)
        if reads_examples(fn):
            raise RewardError(f"reward {reward!r} reads each example's prompt and metadata (e.g. a reference "
                              "answer), which this use does not have: use it as online.reward")
        return reward, checked_reward(reward, fn, timeout_s=timeout_s)
    if not callable(reward):
        raise TypeError(f"reward must be a registered name or a callable, got {type(reward).__name__}")
    name = getattr(reward, "__name__", "custom")
    return name, checked_reward(name, reward, timeout_s=timeout_s)


def resolve_example_reward(reward: str, *, timeout_s: float | None = None,
                           settings: Mapping[str, Any] | None = None,
                           ) -> tuple[str, Callable[[list[RewardExample]], list[float] | RewardBreakdown]]:
    """(name, ``fn(examples)``) for a registered reward: one that reads examples gets them (with ``settings``
    as keyword arguments), a text-only one gets the completions' texts.

    The function returned runs under the time limit and checks its output (:func:`checked_reward`); a
    :class:`RewardBreakdown` passes through with its total and every component checked.

    Raises:
        RegistryError: an unknown name. RewardError: ``settings`` for a text-only reward.
    """
    fn: Any = get_reward(reward)  # texts -> values, or examples -> values (reads_examples)
    if (needs := getattr(fn, "_alignkit_requires", None)) is not None:
        require_extra(needs[0], needs[1], f"reward {reward!r}")
    kwargs = dict(settings or {})
    if (problem := unknown_settings(reward, kwargs)) is not None:
        raise RewardError(problem)
    if not reads_examples(fn):
        checked = checked_reward(reward, fn, timeout_s=timeout_s, components=True)

        def texts_of(examples: list[RewardExample]) -> Any:
            return checked([ex.completion for ex in examples])

        return reward, texts_of

    def call(examples: list[RewardExample]) -> Any:
        return fn(examples, **kwargs)

    call.__name__ = reward
    # checked_reward passes its items through whatever they are (here examples, not texts).
    checked_examples: Any = checked_reward(reward, call, timeout_s=timeout_s, components=True)  # type: ignore[arg-type]
    return reward, checked_examples


def reward_total(value: list[float] | RewardBreakdown) -> list[float]:
    """The rewards of a reward's output: the list itself, or a breakdown's total."""
    return value.total if isinstance(value, RewardBreakdown) else value


def unknown_settings(reward: str, settings: Mapping[str, Any]) -> str | None:
    """What is wrong with ``settings`` for the registered reward ``reward`` (names it does not take), or None."""
    import inspect

    fn = get_reward(reward)
    if not settings:
        return None
    if not reads_examples(fn):
        return f"reward {reward!r} reads texts only and takes no settings; got {', '.join(sorted(settings))}"
    params = inspect.signature(fn).parameters
    taken = [p for p in list(params)[1:] if params[p].kind in (params[p].KEYWORD_ONLY, params[p].POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(settings) - set(taken))
    if unknown:
        return f"reward {reward!r} has no setting {', '.join(map(repr, unknown))}; it takes: {', '.join(taken) or 'none'}"
    return None


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


def checked_reward(name: str, fn: RewardFn, *, timeout_s: float | None = None, components: bool = False) -> RewardFn:
    """``fn`` under a time limit, its output checked and made a list of floats (a non-finite value is left to the
    caller: online training stops on it for every process at once, a judge counts the verdict invalid).

    Args:
        name: the reward's name, for messages.
        fn: ``texts -> rewards``.
        timeout_s: seconds one call may take; :data:`REWARD_TIMEOUT_S` (read at each call) when None.
        components: pass a :class:`RewardBreakdown` on (checked); otherwise only its total is returned.

    Raises (when called):
        RewardError: naming the reward, when it returns anything but one real number per text, does not return
            within ``timeout_s``, raises, or calls ``sys.exit``.
    """
    if getattr(fn, "_alignkit_checked", False):
        return fn

    def checked(texts: list[str]) -> list[float]:
        with phase("scoring"):  # the run's time table (alignkit.timing)
            limit = REWARD_TIMEOUT_S if timeout_s is None else timeout_s
            value = _call_with_time_limit(name, fn, texts, limit)
            if isinstance(value, RewardBreakdown) and not components:
                value = value.total
            elif isinstance(value, RewardBreakdown):  # each component checked as a reward of its own
                return RewardBreakdown(  # type: ignore[return-value]
                    _as_floats(name, value.total, len(texts)),
                    {k: _as_floats(f"{name}/{k}", v, len(texts)) for k, v in value.components.items()})
            return _as_floats(name, value, len(texts))

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


# The built-in verifiable rewards register themselves on import (they import this module, which is complete here).
from alignkit.models import verifiable as _verifiable  # noqa: E402,F401
