"""Rollout sampling whose randomness belongs to each prompt group, not to the batch it is generated in.

:func:`~alignkit.models.generate.generate_completions` seeds each row by its index in the call, so the
completion a row gets depends on where its prompt falls among the call's prompts. Under data parallelism
each process samples its own share of the step's prompts; for 1 and N processes to train on the same
samples, every prompt group (the k completions of one prompt) draws from its own stream, seeded from
(run seed, step, the prompt's index in the step). Batches still hold many groups, so a GPU generates as
wide as before.

Each row takes the next uniform of its group's stream and picks its token by inverse CDF from the
distribution sampling uses (temperature, then top-p): the decoding loop of
:mod:`alignkit.models.decode`, handed the groups' uniforms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alignkit.models.generate import Completion, generate_completions
from alignkit.models.sampling import Sampling

__all__ = ["BatchSums", "Rollout", "group_seed", "group_uniforms", "sample_groups"]


@dataclass
class Rollout:
    """One process's samples of a step: P prompts x k completions, prompt-major, and their rewards (P * k,);
    ``true_rewards`` (P * k,): the ``online.true_reward`` of each, measured but not trained on (None when off);
    ``staleness``: updates between the weights that sampled it and the trained ones;
    ``components``: name -> (P * k,), the rewards a combined reward was summed from (logged, not trained on)."""

    prompts: list[str]
    completions: list[Completion]
    rewards: torch.Tensor
    true_rewards: torch.Tensor | None = None
    # keyword-only, so that neither can take the other's place in a positional call
    staleness: int = field(default=0, kw_only=True)  # updates between the weights that sampled it and the trained ones
    components: dict[str, torch.Tensor] = field(default_factory=dict, kw_only=True)


@dataclass(frozen=True)
class BatchSums:
    """Sums over every sample of the step (all processes'): what the batch means and the k = 1 baseline use."""

    samples: float
    reward: float
    kl_anchor: float
    kl_initial: float
    penalised: float
    logps: float
    tokens: float
    finished: float
    true_reward: float = 0.0  # online.true_reward's sum (0 when it is off)

    def mean(self, name: str) -> float:
        """The per-sample mean of the sum ``name``."""
        return float(getattr(self, name)) / self.samples


def group_seed(seed: int, step: int, prompt_index: int) -> int:
    """The seed of one prompt group's stream: a 64-bit hash of (run seed, step, prompt index in the step)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{prompt_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def group_uniforms(seed: int, rows: int, max_new_tokens: int) -> Tensor:
    """(rows, max_new_tokens) float64 uniforms in [0, 1): row r's draw for its t-th new token."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((rows, max_new_tokens), generator=generator, dtype=torch.float64)


def sample_groups(model: nn.Module, tokenizer, prompts: Sequence[str], indices: Sequence[int], sampling: Sampling,
                  *, seed: int, step: int) -> list[Completion]:
    """``sampling.samples_per_prompt`` completions of every prompt, each group from its own stream.

    Args:
        prompts: this process's prompts of the step.
        indices: their positions among all of the step's prompts (what seeds each group).
        sampling: temperature, top-p, lengths; ``batch_size`` rows decoded together.
        seed, step: the run's seed and the update, the rest of each group's seed.

    Returns:
        Prompt-major completions, ``prompt_index`` into ``prompts``.
    """
    if len(prompts) != len(indices):
        raise ValueError(f"{len(prompts)} prompts but {len(indices)} indices")
    k, width = sampling.samples_per_prompt, sampling.max_new_tokens
    uniforms = torch.cat([group_uniforms(group_seed(seed, step, i), k, width) for i in indices]) if indices \
        else torch.zeros((0, width), dtype=torch.float64)
    return generate_completions(model, tokenizer, list(prompts), sampling, uniforms=uniforms)
