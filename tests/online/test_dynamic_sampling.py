"""DAPO's dynamic sampling: uniform groups are dropped and their places sampled again, up to a cap; the batch is
filled position by position, so splitting the step's prompts over processes samples the same batch."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_online import PROMPTS, direct_trainer

from alignkit.models.generate import Completion
from alignkit.online.config import OnlineConfig
from alignkit.online.dynamic_sampling import fill_batch, refill_prompt, uniform_groups
from alignkit.online.rollout import Rollout

K = 2


def test_uniform_groups_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.5, 2.0, 2.0])
    assert uniform_groups(rewards, 2).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="k >= 2"):
        uniform_groups(rewards, 1)


def _scripted(table: dict[tuple[str, int], list[float]]):
    """A sampler whose rewards are a table of (prompt, stream) -> k rewards: what sampling a prompt from a
    stream gives depends on the two alone, as the real sampler's does."""
    calls: list[list[int]] = []

    def sample(prompts: list[str], streams: list[int]) -> Rollout:
        calls.append(list(streams))
        pairs = list(zip(prompts, streams, strict=True))
        completions = [Completion(i, f"{p}@{s}#{j}", [], []) for i, (p, s) in enumerate(pairs) for j in range(K)]
        rewards = [r for p, s in pairs for r in table.get((p, s), [float(s), float(s) + 1])]
        return Rollout(list(prompts), completions, torch.tensor(rewards))

    return sample, calls


def test_fill_batch_refills_uniform_groups_in_their_positions_and_counts():
    prompts = ["a", "b", "c", "d"]
    # position 0 starts uniform, and its first refill (stream 0 + 1 * 2) is uniform too; position 1 has a signal.
    first_refill = prompts[refill_prompt(7, 3, 0, 1, 4)]
    sample, calls = _scripted({("a", 0): [1.0, 1.0], (first_refill, 2): [5.0, 5.0]})
    roll, counts = fill_batch(sample(["a", "b"], [0, 1]), [0, 1], sample, prompts, k=K, seed=7, step=3, total=2,
                              max_extra_rounds=3)
    assert calls == [[0, 1], [2], [4]]  # round r samples position j from stream j + r * total
    assert (counts.rounds, counts.resampled, counts.uniform) == (2, 2, 0)
    second = prompts[refill_prompt(7, 3, 0, 2, 4)]
    assert roll.prompts == [second, "b"] and roll.rewards.tolist() == [4.0, 5.0, 1.0, 2.0]
    assert [c.prompt_index for c in roll.completions] == [0, 0, 1, 1]
    assert [c.text for c in roll.completions] == [f"{second}@4#0", f"{second}@4#1", "b@1#0", "b@1#1"]


def test_the_cap_stops_the_refilling_and_keeps_the_last_group():
    always_flat = lambda prompts, streams: Rollout(list(prompts), [Completion(i, "x", [], []) for i in  # noqa: E731
                                                                    range(len(prompts)) for _ in range(K)],
                                                   torch.zeros(len(prompts) * K))
    roll, counts = fill_batch(always_flat(["a"], [0]), [0], always_flat, ["a", "b"], k=K, seed=0, step=0, total=1,
                              max_extra_rounds=2)
    assert (counts.rounds, counts.resampled, counts.uniform) == (2, 2, 1) and len(roll.completions) == K


def test_splitting_the_positions_over_processes_fills_the_same_batch():
    """Each process fills its own positions: the halves, put together, are the whole (a planted refill keyed by
    the slot within a process instead of the step's position would differ)."""
    prompts = [f"p{i}" for i in range(8)]
    flat = {(p, s): [0.0, 0.0] for p in prompts for s in range(0, 4 * 6, 2)}  # even streams: uniform
    sample, _ = _scripted(flat)
    whole, counts = fill_batch(sample(prompts[:4], [0, 1, 2, 3]), [0, 1, 2, 3], sample, prompts, k=K, seed=1,
                               step=5, total=4, max_extra_rounds=3)
    halves = [fill_batch(sample(prompts[i:i + 2], [i, i + 1]), [i, i + 1], sample, prompts, k=K, seed=1, step=5,
                         total=4, max_extra_rounds=3) for i in (0, 2)]
    assert [c.text for h, _ in halves for c in h.completions] == [c.text for c in whole.completions]
    assert torch.equal(torch.cat([h.rewards for h, _ in halves]), whole.rewards)
    assert sum(c.resampled for _, c in halves) == counts.resampled and counts.resampled > 0


def test_the_dapo_preset_turns_it_on_and_a_recipe_can_turn_it_off():
    assert OnlineConfig(reward="x", algorithm="dapo").dynamic_sampling.enabled
    assert not OnlineConfig(reward="x", algorithm="grpo").dynamic_sampling.enabled
    off = OnlineConfig(reward="x", algorithm="dapo", dynamic_sampling={"enabled": False})
    assert not off.dynamic_sampling.enabled
    with pytest.raises(ValueError, match="dynamic_sampling needs online.samples_per_prompt >= 2"):
        OnlineConfig(reward="x", algorithm="dapo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="max_extra_rounds"):
        OnlineConfig(reward="x", dynamic_sampling={"enabled": True, "max_extra_rounds": 0})


def _has_a_space(prompts: list[str], texts: list[str]) -> list[float]:
    """A reward most groups of a tiny random model agree on (0): a completion that contains a space."""
    return [float(" " in t) for t in texts]


def test_a_dapo_run_on_a_tiny_model_refills_and_logs_what_it_took(tmp_path, gpt2_tokenizer):
    trainer = direct_trainer(tmp_path, gpt2_tokenizer, {"algorithm": "dapo", "kl_control": {"kind": "fixed"}},
                             max_steps=1, save_every=None, score=_has_a_space)
    roll = trainer.rollout(0)
    counts = trainer.fill_counts
    assert counts is not None and counts.resampled > 0  # this reward leaves groups uniform: refilling ran and len(roll.prompts) == 2 and len(roll.completions) == 2 * K
    # Whatever is left uniform is what the counts say; each completion sits with the prompt it was sampled from.
    assert int(uniform_groups(roll.rewards, K).sum()) == counts.uniform
    for c in roll.completions:
        assert gpt2_tokenizer.decode(c.prompt_ids) == roll.prompts[c.prompt_index]
    assert roll.rewards.tolist() == _has_a_space([], [c.text for c in roll.completions])
    assert set(roll.prompts) <= set(PROMPTS)
    (metrics,) = trainer.fit().history
    assert {"dropped_groups", "uniform_groups", "extra_rounds"} <= set(metrics)
    assert 0 <= metrics["extra_rounds"] <= 4 and all(math.isfinite(v) for k, v in metrics.items()
                                                     if k != "explained_variance")


def test_refilled_groups_keep_a_combined_rewards_components_in_place():
    prompts = ["a", "b", "c", "d"]
    base, _ = _scripted({("a", 0): [1.0, 1.0]})

    def sample(chosen: list[str], streams: list[int]) -> Rollout:
        roll = base(chosen, streams)  # one component equal to the total, one its negative
        return Rollout(roll.prompts, roll.completions, roll.rewards, None,
                       components={"x": roll.rewards.clone(), "neg": -roll.rewards})

    roll, _ = fill_batch(sample(["a", "b"], [0, 1]), [0, 1], sample, prompts, k=K, seed=7, step=3, total=2,
                         max_extra_rounds=3)
    assert roll.components["x"].tolist() == roll.rewards.tolist()
    assert roll.components["neg"].tolist() == (-roll.rewards).tolist()
