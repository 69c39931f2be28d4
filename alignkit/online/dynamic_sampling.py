"""DAPO's dynamic sampling: a prompt group whose k rewards all agree carries no signal, so it is sampled again.

Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale". With group-relative
advantages a group of equal rewards (every sample right, or every sample wrong) has advantage 0 on every token:
it costs an update's compute and only shrinks the batch's gradient. DAPO drops such groups and keeps sampling
until the batch is full.

Here the batch is filled by position: the step's prompt at position j (of all processes' P prompts) whose group
is uniform is replaced, in extra round r, by the prompt :func:`refill_prompt` picks for (seed, step, j, r), and
that group is sampled from its own stream (the stream of position ``j + r * P``). What a position ends up with
depends on nothing else in the batch, so N processes sample exactly what one process does and every process
keeps its share of P groups. A position still uniform after ``max_extra_rounds`` keeps its last group (zero
advantage), and is counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from alignkit.online.rollout import Rollout

__all__ = ["FillCounts", "fill_batch", "refill_prompt", "uniform_groups"]

# (prompts, stream positions) -> the rollout of those prompts, k completions each, rewards included.
SampleFn = Callable[[list[str], list[int]], Rollout]


def uniform_groups(rewards: Tensor, k: int) -> Tensor:
    """(P,) bool: True where all k rewards of a prompt group are equal (a group carries no signal).

    Shape:
        rewards: (P * k,), prompt-major -> (P,).
    """
    if k < 2 or rewards.numel() % k:
        raise ValueError(f"uniform_groups needs groups of k >= 2 samples; got {rewards.numel()} rewards, k = {k}")
    grouped = rewards.view(-1, k)
    return (grouped == grouped[:, :1]).all(dim=1)


def refill_prompt(seed: int, step: int, position: int, round_: int, num_prompts: int) -> int:
    """The index (into the training prompts) of the prompt that refills ``position`` of ``step`` in extra
    round ``round_``: a hash of the four, so any process computes it alone."""
    digest = hashlib.blake2b(f"refill:{seed}:{step}:{position}:{round_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_prompts


@dataclass(frozen=True)
class FillCounts:
    """What filling one process's batch took.

    Attributes:
        rounds: extra sampling rounds (0: every group had a signal at once).
        resampled: groups sampled again (each uniform group dropped counts once per round).
        uniform: positions still uniform when the cap stopped the refilling.
    """

    rounds: int
    resampled: int
    uniform: int


def fill_batch(rollout: Rollout, positions: Sequence[int], sample: SampleFn, prompts: Sequence[str], *, k: int,
               seed: int, step: int, total: int, max_extra_rounds: int) -> tuple[Rollout, FillCounts]:
    """Replace the uniform groups of ``rollout`` until none is left or ``max_extra_rounds`` rounds have run.

    Args:
        rollout: this process's first samples of the step (its prompts x k, prompt-major).
        positions: each of its prompts' position among all of the step's ``total`` prompts.
        sample: samples and rewards k completions of each prompt, from the streams of the given positions.
        prompts: every training prompt (the refills are drawn from them).
        k: completions per prompt.
        seed, step: the run's seed and the update (with the position, what picks a refill prompt).
        total: the step's prompts over every process (P); round r samples from streams ``j + r * P``.
        max_extra_rounds: the cap on extra sampling rounds.

    Returns:
        The rollout with the same number of groups, each in its position, and the counts.
    """
    groups = [_group(rollout, i, k) for i in range(len(rollout.prompts))]
    pending = [i for i, flat in enumerate(uniform_groups(rollout.rewards, k).tolist()) if flat]
    rounds = resampled = 0
    while pending and rounds < max_extra_rounds:
        rounds += 1
        chosen = [prompts[refill_prompt(seed, step, positions[i], rounds, len(prompts))] for i in pending]
        fresh = sample(chosen, [positions[i] + rounds * total for i in pending])
        resampled += len(pending)
        flat = uniform_groups(fresh.rewards, k).tolist()
        for slot, i in enumerate(pending):
            groups[i] = _group(fresh, slot, k)
        pending = [i for slot, i in enumerate(pending) if flat[slot]]
    return _joined(groups, rollout.true_rewards is not None), FillCounts(rounds, resampled, len(pending))


@dataclass
class _Group:
    prompt: str
    completions: list
    rewards: Tensor
    true_rewards: Tensor | None
    components: dict[str, Tensor]


def _group(rollout: Rollout, index: int, k: int) -> _Group:
    rows = slice(index * k, (index + 1) * k)
    true = rollout.true_rewards[rows] if rollout.true_rewards is not None else None
    return _Group(rollout.prompts[index], rollout.completions[rows], rollout.rewards[rows], true,
                  {name: values[rows] for name, values in rollout.components.items()})


def _joined(groups: list[_Group], has_true: bool) -> Rollout:
    completions = [replace(c, prompt_index=i) for i, g in enumerate(groups) for c in g.completions]
    rewards = torch.cat([g.rewards for g in groups]) if groups else torch.zeros(0)
    true = torch.cat([g.true_rewards for g in groups if g.true_rewards is not None]) if has_true else None
    names = groups[0].components if groups else {}  # a combined reward's components, kept for logging
    components = {name: torch.cat([g.components[name] for g in groups]) for name in names}
    return Rollout([g.prompt for g in groups], completions, rewards, true, components=components)
