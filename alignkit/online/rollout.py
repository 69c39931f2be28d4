"""Rollout sampling whose randomness belongs to each prompt group, not to the batch it is generated in.

:func:`~alignkit.models.generate.generate_completions` seeds the torch RNG once per ``generate`` call, so the
completion a row gets depends on the other rows of its batch. Under data parallelism each process samples
its own share of the step's prompts, in other batches than one process would; for 1 and N processes to
train on the same samples, every prompt group (the k completions of one prompt) draws from its own stream,
seeded from (run seed, step, the prompt's index in the step). Batches still hold many groups, so a GPU
generates as wide as before.

The draw is made in a logits processor: each row takes the next uniform of its stream and picks its token by
inverse CDF from the distribution sampling would use (temperature, then top-p, with transformers' own
warpers); ``generate`` is then handed a distribution with all its mass on that token, which its own
sampling can only pick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from alignkit.models.generate import Completion, generate_completions
from alignkit.models.sampling import Sampling

__all__ = ["BatchSums", "GroupSampler", "Rollout", "group_seed", "sample_groups"]


@dataclass
class Rollout:
    """One process's samples of a step: P prompts x k completions, prompt-major, and their rewards (P * k,);
    ``true_rewards`` (P * k,): the ``online.true_reward`` of each, measured but not trained on (None when off)."""

    prompts: list[str]
    completions: list[Completion]
    rewards: torch.Tensor
    true_rewards: torch.Tensor | None = None


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


class GroupSampler(LogitsProcessor):
    """Picks every row's next token with that row's own uniform (inverse CDF); one ``generate`` call only.

    Args:
        uniforms: (rows, max_new_tokens) from :func:`group_uniforms`, in the rows' order in the batch.
        temperature: > 0.
        top_p: nucleus mass in (0, 1].
    """

    def __init__(self, uniforms: Tensor, temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError(f"per-group sampling needs temperature > 0, got {temperature}")
        self.uniforms, self.position = uniforms, 0
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)] if temperature != 1 else []
        if top_p < 1:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, steps = self.uniforms.shape
        if scores.shape[0] != rows or self.position >= steps:  # a second batch or call would reuse the draws
            raise RuntimeError(f"GroupSampler holds {rows} rows x {steps} tokens, asked for row count "
                               f"{scores.shape[0]} at token {self.position}")
        u = self.uniforms[:, self.position].to(scores.device)
        self.position += 1
        probs = torch.softmax(self.warpers(input_ids, scores).double(), dim=-1)  # (B, V)
        cdf = probs.cumsum(dim=-1)
        # right=True never lands on a zero-probability token (its cdf equals its predecessor's).
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).clamp(max=probs.shape[1] - 1)
        picked = torch.full_like(scores, float("-inf"))
        return cast(torch.FloatTensor, picked.scatter_(1, tokens, 0.0))  # generate's own annotation


def sample_groups(model: nn.Module, tokenizer, prompts: Sequence[str], indices: Sequence[int], sampling: Sampling,
                  *, seed: int, step: int) -> list[Completion]:
    """``sampling.samples_per_prompt`` completions of every prompt, each group from its own stream.

    Args:
        prompts: this process's prompts of the step.
        indices: their positions among all of the step's prompts (what seeds each group).
        sampling: temperature, top-p, lengths; ``batch_size`` rows per ``generate`` call, rounded to whole
            groups (at least one group).
        seed, step: the run's seed and the update, the rest of each group's seed.

    Returns:
        Prompt-major completions, ``prompt_index`` into ``prompts``.
    """
    if len(prompts) != len(indices):
        raise ValueError(f"{len(prompts)} prompts but {len(indices)} indices")
    k, width = sampling.samples_per_prompt, sampling.max_new_tokens
    groups_per_call = max(1, sampling.batch_size // k)
    out: list[Completion] = []
    for lo in range(0, len(prompts), groups_per_call):
        chunk = list(prompts[lo:lo + groups_per_call])
        uniforms = torch.cat([group_uniforms(group_seed(seed, step, i), k, width)
                              for i in indices[lo:lo + groups_per_call]])
        sampler = GroupSampler(uniforms, sampling.temperature, sampling.top_p)
        # temperature 1, top-p 1: generate's own warpers leave the sampler's one-token distribution as it is.
        call = sampling.but(batch_size=len(chunk) * k, temperature=1.0, top_p=1.0)
        completions = generate_completions(model, tokenizer, chunk, call,
                                           generation_kwargs={"logits_processor": LogitsProcessorList([sampler])})
        out += [replace(c, prompt_index=c.prompt_index + lo) for c in completions]
    return out
