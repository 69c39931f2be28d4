"""Shared helpers of the peft tests: the adapter kinds under test, a fixed batch, a few training steps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run tiny models on one thread: on a busy 2-core machine a second spinning thread costs 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Every adapter kind the tests train, by a readable id.
KINDS: dict[str, dict] = {
    "bottleneck-sequential": {"kind": "bottleneck", "placement": "sequential", "bottleneck_size": 8},
    "bottleneck-parallel": {"kind": "bottleneck", "placement": "parallel", "bottleneck_size": 8, "dropout": 0.1},
    "bottleneck-parallel-from-mlp": {"kind": "bottleneck", "placement": "parallel", "init": "from_mlp",
                                     "bottleneck_size": 8, "scaling": "learned"},
    "bottleneck-replace": {"kind": "bottleneck", "placement": "replace", "bottleneck_size": 16},
    "lora": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
}


# A small vocabulary keeps the output layer (and the tests) fast; the adapters never touch it.
VOCAB = 512


def fixed_batch(vocab_size: int = VOCAB, batch: int = 4, length: int = 12) -> torch.Tensor:
    """(batch, length) token ids, the same every call."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (batch, length), generator=gen)


def nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of ``ids`` under ``model`` (scalar)."""
    return model(input_ids=ids, labels=ids).loss


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int = 8, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on the trainable parameters (train mode, so adapter dropout is live)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        loss = nll(model, ids)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    model.eval()
    return losses


def randomize_adapter(model: nn.Module, seed: int = 0) -> None:
    """Give every trainable (adapter) parameter random values, as if trained, so outputs differ from the base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1 + (1.0 if param.ndim == 0 else 0.0))
