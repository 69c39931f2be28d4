"""A user's own reward, kept outside alignkit and loaded as a plugin.

``upbeat_and_brief`` is the built-in VADER sentiment with a price on length: a completion gains by sounding
positive and loses a little for every word past a budget, so the policy cannot raise its reward by rambling.

    r(text) = vader(text) − 0.05 · max(0, words(text) − 20)

Use it from an online recipe::

    plugins: [my_reward.py]            # relative to the recipe's folder
    online: {reward: upbeat_and_brief}
    eval: {reward: upbeat_and_brief}   # the final evaluation may use it too

or from the command line: ``alignkit online recipe.yaml --plugin examples/my_reward.py
online.reward=upbeat_and_brief``.

A reward is a function of the completions' texts (the prompt is not passed): it receives a batch of texts and
returns one number per text (a list, tuple, 1-D array or tensor). It runs on the main process's CPU between
sampling and the update, so keep it fast; load anything large once, at first use, not per call.
"""

from __future__ import annotations

from alignkit.models.rewards import get_reward, register_reward

__all__ = ["LENGTH_PENALTY", "WORD_BUDGET", "upbeat_and_brief"]

WORD_BUDGET = 20  # words a completion may use for free
LENGTH_PENALTY = 0.05  # reward lost per word beyond the budget


@register_reward("upbeat_and_brief")
def upbeat_and_brief(texts: list[str]) -> list[float]:
    """VADER sentiment in [-1, 1] minus 0.05 per word beyond 20 words."""
    sentiment = get_reward("vader_sentiment")(texts)  # a built-in reward, reused by name
    return [s - LENGTH_PENALTY * max(0, len(t.split()) - WORD_BUDGET) for s, t in zip(sentiment, texts, strict=True)]
