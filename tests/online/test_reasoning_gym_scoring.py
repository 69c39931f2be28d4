"""On a few hundred generated problems of each task alignkit ships a recipe or measurement for, the
``reasoning_gym`` reward equals the task's own ``score_answer``: for the reference answer and for corrupted ones."""

from __future__ import annotations

import pytest

from alignkit.models.rewards import RewardExample, get_reward

reasoning_gym = pytest.importorskip("reasoning_gym")

# The tasks of docs/results/reasoning_tasks.md and recipes/online/grpo_smollm2_reasoning.yaml.
SHIPPED_TASKS = ["basic_arithmetic", "chain_sum", "leg_counting", "simple_equations"]
N = 300


def _corruptions(answer: str) -> list[str]:
    return [answer + "1", answer[:-1], " " + answer + " ", f"-{answer}", answer.upper() + "x", "0", ""]


@pytest.mark.parametrize("task", SHIPPED_TASKS)
def test_reward_equals_the_tasks_own_scorer(task):
    config = {"size": N, "seed": 11}
    dataset = reasoning_gym.create_dataset(task, **config)
    examples, expected = [], []
    for i in range(N):
        entry = dataset[i]
        meta = {"answer": entry["answer"], "rg_task": task, "rg_config": config, "rg_index": i}
        for answer in [str(entry["answer"]), *_corruptions(str(entry["answer"]))]:
            examples.append(RewardExample(entry["question"], f"Reasoning...\n<answer>{answer}</answer>", meta))
            # reasoning-gym's own reading of the answer tags, then its own scorer
            own = reasoning_gym.utils.extract_answer(examples[-1].completion)
            expected.append(float(dataset.score_answer(own, entry)) if own else 0.0)
    got = get_reward("reasoning_gym")(examples)
    mismatches = [(examples[i].completion, got[i], expected[i]) for i in range(len(got)) if got[i] != expected[i]]
    assert not mismatches, mismatches[:5]
    assert sum(expected) >= N  # every reference answer scores (so the comparison is not all zeros)
    assert min(expected) < 1.0  # and corrupted answers do not all score 1
