"""Cached reference log-probs are computed under the run's precision: at the first step of a bf16 autocast run
the policy equals its reference, so DPO's log-ratios are exactly 0 and its loss is log 2, as with a live one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from workflow_recipes import tiny_jsonl_recipe

from alignkit.cli import main

LORA = "adapter={kind: lora, r: 4, alpha: 8.0}"


def _first_step(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "preference" / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("step") == 1 and "loss" in r)


@pytest.mark.parametrize("adapter", [None, LORA], ids=["initial_model", "adapters_off"])
def test_cached_reference_of_a_bf16_run_makes_the_first_dpo_loss_log_2(tmp_path, adapter):
    recipe = tiny_jsonl_recipe(tmp_path)
    run_dir = tmp_path / "run_bf16"
    args = ["run", str(recipe), "reference.mode=cached", "train.precision=bf16", f"output_dir={run_dir}"]
    assert main(args + ([adapter] if adapter else [])) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["precision"]["used"] == "bf16 autocast"
    first = _first_step(run_dir)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
