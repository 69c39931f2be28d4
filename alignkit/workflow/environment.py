"""Process-level set-up shared by every run: the device, the seeds, and the peak memory figure."""

from __future__ import annotations

import random
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from alignkit.train.distributed import DistEnv

__all__ = ["peak_rss_mib", "resolve_device", "rng_preserved", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def rng_preserved() -> Iterator[None]:
    """Leave Python's, NumPy's and torch's random streams as they were, whatever runs inside."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def resolve_device(name: str, env: DistEnv | None = None) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # each process its own GPU under torchrun
        return torch.device("cuda", env.local_rank if env else 0)
    return device


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
