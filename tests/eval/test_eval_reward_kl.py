"""The reward-versus-KL report on tiny models with a deterministic reward."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from alignkit.eval.reward_kl import evaluate_model_reward, evaluate_reward_kl, reward_gain

PROMPTS = ["The weather today is", "My favourite food", "Tell me about trains", "Once upon a time"]


def length_reward(texts: list[str]) -> list[float]:
    return [float(len(t)) for t in texts]


SETTINGS = dict(samples_per_prompt=3, max_new_tokens=5, batch_size=5, seed=11)


def test_reference_evaluated_against_itself(tiny_gpt2, gpt2_tokenizer):
    report = evaluate_reward_kl(tiny_gpt2, tiny_gpt2, gpt2_tokenizer, PROMPTS, length_reward, **SETTINGS)
    before = evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, PROMPTS, length_reward, **SETTINGS)
    assert report.kl == (0.0, 0.0, 0.0)
    assert before.kl == (0.0, 0.0, 0.0)
    # Same seed, same model: the same samples, so the same reward.
    assert before.reward == report.reward
    assert report.n == 12 and report.n_prompts == 4 and report.samples_per_prompt == 3
    assert report.reward_name == "length_reward"
    assert report.mean_length == 5.0  # no EOS in 5 tokens of a random GPT-2 (EOS is 1 of 50,257)
    assert report.finished_fraction == 0.0
    assert len(report.per_prompt_reward) == 4
    assert report.reward.estimate == pytest.approx(sum(report.per_prompt_reward) / 4)
    assert report.reward.low <= report.reward.estimate <= report.reward.high
    for ex in report.examples:
        assert ex["reward"] == len(ex["completion"])
    # Examples come from different prompts.
    assert [ex["prompt"] for ex in report.examples] == PROMPTS[:3]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["reward"]["estimate"] == report.reward.estimate
    assert data["n"] == 12 and data["settings"]["seed"] == 11


def test_kl_is_positive_for_a_changed_policy(tiny_gpt2, gpt2_tokenizer):
    policy = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    report = evaluate_reward_kl(policy, tiny_gpt2, gpt2_tokenizer, PROMPTS, length_reward, **SETTINGS)
    assert report.kl.estimate > 0
    assert len(report.per_prompt_kl) == 4


def test_registered_reward_names_work(tiny_gpt2, gpt2_tokenizer):
    report = evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], "vader_sentiment", **SETTINGS)
    assert report.reward_name == "vader_sentiment"
    assert -1 <= report.reward.estimate <= 1


def test_reward_gain_is_paired_by_prompt(tiny_gpt2, gpt2_tokenizer):
    before = evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, PROMPTS, length_reward, **SETTINGS)
    # Every prompt gains exactly 2: the paired interval has zero width even though prompts differ.
    shifted = [r + 2.0 for r in before.per_prompt_reward]
    after = dataclasses.replace(before, per_prompt_reward=shifted)
    gain = reward_gain(before, after)
    assert gain.estimate == pytest.approx(2.0)
    assert gain.low == pytest.approx(2.0) and gain.high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="different prompt sets"):
        reward_gain(before, dataclasses.replace(before, n_prompts=3))


def test_bad_inputs(tiny_gpt2, gpt2_tokenizer):
    with pytest.raises(ValueError, match="no prompts"):
        evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, [], length_reward, **SETTINGS)
    with pytest.raises(ValueError, match="returned 1 values for 3 texts"):
        evaluate_model_reward(tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], lambda texts: [0.0], **SETTINGS)
