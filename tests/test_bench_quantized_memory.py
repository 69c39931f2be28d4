"""benchmarks/quantized_memory.py: what it counts as saved for backward (worked by hand on a tiny network)."""

from __future__ import annotations

import pytest
import torch
from conftest import import_benchmark
from torch import nn


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("quantized_memory")


def test_saved_for_backward_counts_each_activation_buffer_once_and_no_parameter(bench):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5))
    x = torch.randn(2, 4, requires_grad=True)
    with bench._saved_bytes(model) as saved:
        loss = model(x).sum()
    # The first linear saves x (2 x 4 float32 = 32 bytes); tanh and the second linear both save tanh's output
    # (2 x 3 = 24 bytes), once; the weights both linears save (as transposed views) are parameters: not counted.
    assert saved[0] == 32 + 24
    loss.backward()
    assert x.grad is not None
