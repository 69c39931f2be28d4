"""Rollout engines: what samples a step's completions from a given version of the weights.

An engine holds one version of the policy's weights, named by the number of updates behind it (``weights_step``):
the trainer pushes the weights with :meth:`RolloutEngine.sync` after updates and asks for samples of a named
version with :meth:`RolloutEngine.sample`; an engine that holds another version refuses, so nothing is trained on
samples of an unknown policy.

- :class:`LocalEngine` over the policy itself: the decoding loop of this process on the current weights (sync
  is nothing to do). What a synchronous run uses.
- :class:`LocalEngine` over a copy of the policy (``copy=True``): the trainable tensors are copied in on sync, so
  the next rollout can be sampled in a thread while the policy trains (``online.async.max_staleness: 1``).
- :class:`~alignkit.online.server_engine.ServerEngine`: an inference server over HTTP.

Every engine samples prompt group i of step s from the stream of (seed, s, i) (:mod:`alignkit.online.rollout`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from alignkit.models.generate import Completion
from alignkit.models.sampling import Sampling
from alignkit.online.rollout import sample_groups

__all__ = ["LocalEngine", "RolloutEngine"]


class RolloutEngine(Protocol):
    """What samples rollouts (see the module docstring)."""

    synced: int | None  # the weights_step of the weights it holds (None: none pushed yet)

    def sample(self, prompts: Sequence[str], indices: Sequence[int], *, step: int,
               weights_step: int) -> list[Completion]:
        """``samples_per_prompt`` completions of every prompt (prompt-major, ``prompt_index`` into ``prompts``),
        with the sampler's log-probs, from the weights after ``weights_step`` updates.

        Args:
            prompts: this process's prompts of the step; ``indices``: their positions in the step.
            step: the update the samples are for (it seeds each group's stream).
            weights_step: the version of the weights they must come from.
        """
        ...

    def sync(self, policy: nn.Module, weights_step: int) -> None:
        """Give the engine the policy's weights after ``weights_step`` updates."""
        ...


class LocalEngine:
    """This process's decoding loop, on the policy (``copy=False``) or on a copy that sync refreshes.

    Args:
        policy: the trained model.
        tokenizer: its tokenizer.
        sampling: the rollout sampling settings.
        seed: the run's seed.
        copy: sample from a copy of ``policy`` (so that sampling and training can overlap).
    """

    def __init__(self, policy: nn.Module, tokenizer, sampling: Sampling, *, seed: int, copy: bool = False) -> None:
        self.tokenizer, self.sampling, self.seed = tokenizer, sampling, seed
        self.follows_policy = not copy
        self.model = _frozen_copy(policy) if copy else policy
        self.synced: int | None = None

    def sample(self, prompts: Sequence[str], indices: Sequence[int], *, step: int,
               weights_step: int) -> list[Completion]:
        if not self.follows_policy and self.synced != weights_step:
            raise RuntimeError(f"the local sampler holds the weights of update {self.synced}, not {weights_step}")
        return sample_groups(self.model, self.tokenizer, prompts, indices, self.sampling, seed=self.seed, step=step)

    def sync(self, policy: nn.Module, weights_step: int) -> None:
        if not self.follows_policy:
            own = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    if param.requires_grad:
                        own[name].copy_(param)
        self.synced = weights_step


def _frozen_copy(policy: nn.Module) -> nn.Module:
    """A copy of ``policy`` for sampling only (no gradients)."""
    model = copy.deepcopy(policy)
    for param in model.parameters():
        param.requires_grad_(False)
        param.grad = None
    return model.eval()
