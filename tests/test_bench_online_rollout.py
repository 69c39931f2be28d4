"""The online-step benchmark harness runs on a tiny model (structure only: a test never asserts a timing)."""

from __future__ import annotations

import math

import pytest
from conftest import import_benchmark, make_tiny_gpt2, single_thread


@pytest.mark.parametrize("staleness", [0, 1])
def test_the_step_split_adds_up(tmp_path, staleness):
    bench = import_benchmark("online_rollout")
    with single_thread():
        result = bench.run("local", staleness, tmp_path, None, policy=make_tiny_gpt2(), steps=3, new_tokens=4)
    assert set(result) == {"step", "sampling", "sync", "training"}
    assert all(math.isfinite(v) and v >= 0 for v in result.values()), result
    assert result["sampling"] + result["sync"] + result["training"] == pytest.approx(result["step"])
