"""Data parallelism of the online step: which prompts a process samples, and what it shares with the others.

Every process holds the whole model (replicated weights, strategy ddp) and samples a contiguous, equal share
of the step's prompts, whole prompt groups each, so the leave-one-out baselines are those of one process.
What is measured over the whole batch (the k = 1 baseline, the KL the adaptive beta follows, the logged
metrics) is summed over processes (:func:`~alignkit.train.distributed.all_reduce_flags`); the gradients are summed by
:func:`~alignkit.train.distributed.all_reduce_gradients`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from alignkit.models.padding import pad_token_rows
from alignkit.train.distributed import DistEnv

__all__ = ["check_world_size", "gather_sequences", "local_share"]

T = TypeVar("T")


def check_world_size(prompts_per_step: int, world_size: int) -> None:
    """Refuse a step that does not split into equal shares of whole prompts.

    Raises:
        ValueError: naming ``train.prompts_per_step``.
    """
    if prompts_per_step % world_size:
        raise ValueError(f"train.prompts_per_step={prompts_per_step} is not divisible by the {world_size} "
                         "processes, each of which samples an equal share of the step's prompts; make it a "
                         f"multiple of {world_size} or start another number of processes")


def local_share(items: Sequence[T], env: DistEnv) -> tuple[int, list[T]]:
    """This process's contiguous block of ``items`` (their count divisible by the world size) and its offset."""
    size = len(items) // env.world_size
    start = env.rank * size
    return start, list(items[start:start + size])


def gather_sequences(sequences: Sequence[Sequence[int]], width: int, env: DistEnv,
                     device: torch.device) -> list[list[int]]:
    """Every process's ``sequences`` (non-negative ids, at most ``width`` long; as many on each process),
    in rank order."""
    if not env.enabled:
        return [list(s) for s in sequences]
    padded, _ = pad_token_rows(sequences, -1, width=width)  # -1: not an id, dropped after the gather
    padded = padded.to(device)
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return [[i for i in row if i >= 0] for part in parts for row in part.tolist()]
