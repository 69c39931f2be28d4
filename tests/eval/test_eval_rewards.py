"""Reward functions: the registry and VADER sentiment."""

from __future__ import annotations

import pytest

from alignkit.models.rewards import (
    REWARDS,
    get_reward,
    list_rewards,
    register_reward,
    resolve_reward,
    vader_sentiment,
)
from alignkit.registry import RegistryError


def test_vader_sign_on_obvious_texts():
    pos, neg, neutral = vader_sentiment(
        ["I love this, it is wonderful and makes me so happy!", "This is terrible. I hate it.", "The table is brown."]
    )
    assert pos > 0.5
    assert neg < -0.5
    assert neutral == 0.0
    assert get_reward("vader_sentiment") is vader_sentiment
    assert "vader_sentiment" in list_rewards()


def test_vader_scores_are_in_range_and_batched():
    texts = ["great " * 50, "awful " * 50, ""]
    scores = vader_sentiment(texts)
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    assert vader_sentiment([]) == []


def test_registering_a_reward_and_errors():
    @register_reward("test_num_words")
    def num_words(texts: list[str]) -> list[float]:
        return [float(len(t.split())) for t in texts]

    try:
        assert get_reward("test_num_words")(["a b c", ""]) == [3.0, 0.0]
        name, fn = resolve_reward("test_num_words")  # checked: one float per text, under a time limit
        assert name == "test_num_words" and fn(["a b", "c"]) == [2.0, 1.0] and fn.__name__ == "num_words"
        with pytest.raises(RegistryError, match="already registered"):
            register_reward("test_num_words")(num_words)
    finally:
        REWARDS.remove("test_num_words")
    with pytest.raises(RegistryError, match="unknown reward function 'test_num_words'.*vader_sentiment"):
        get_reward("test_num_words")


def test_resolve_reward_takes_callables():
    def shout(texts: list[str]) -> list[float]:
        return [float(t.count("!")) for t in texts]

    name, fn = resolve_reward(shout)
    assert name == "shout" and fn(["hi!!", "no"]) == [2.0, 0.0]
    with pytest.raises(TypeError, match="registered name or a callable"):
        resolve_reward(3)  # type: ignore[arg-type]
