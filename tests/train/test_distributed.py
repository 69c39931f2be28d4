"""Data parallelism: two gloo processes train exactly like one process on the same batches, and stop together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_group import run_ranks
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")
DIVERGENCE_WORKER = Path(__file__).with_name("ddp_divergence_worker.py")


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    _run([sys.executable, str(WORKER), str(single)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
          str(WORKER), str(double)], tmp_path)
    a, b = load_file(str(single / "grads.safetensors")), load_file(str(double / "grads.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-7, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in a.values())

    def losses(folder: Path) -> list[float]:
        lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert losses(double) == pytest.approx(losses(single), rel=1e-4)


def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    """Rank 1's loss is NaN on one micro-batch: both processes raise the same error, neither hangs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ranks = run_ranks([sys.executable, str(DIVERGENCE_WORKER), str(tmp_path)], tmp_path, env)
    assert [code for code, _ in ranks] == [0, 0], "\n".join(log for _, log in ranks)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["error"] == results[1]["error"] == "TrainingDivergedError", results
    assert results[0]["message"] == results[1]["message"]
    assert (results[0]["step"], results[0]["metric"]) == (2, "loss")
    expected = "non-finite loss at step 2 (on 1 of 2 processes, stopped before the optimizer step)"
    assert expected in results[0]["message"]
    assert results[0]["weights_finite"] and results[1]["weights_finite"]
