"""The shipped reasoning recipe, shortened, end to end with the real SmolLM2 (slow: minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main

SHORT = [
    "prompts.num_prompts=16", "prompts.num_eval_prompts=4", "online.samples_per_prompt=2", "online.max_new_tokens=24",
    "train.prompts_per_step=2", "train.max_steps=2", "accuracy.num_problems=4", "accuracy.samples=2",
    "accuracy.ks=[1, 2]", "accuracy.max_new_tokens=24",
]


@pytest.mark.slow
def test_reasoning_recipe_shortened(tmp_path, smollm2_folder, capsys):
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "run"
    assert main(["online", "recipes/online/grpo_smollm2_reasoning.yaml", f"output_dir={out}", *SHORT]) == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["reward"] == "reasoning_gym" and acc["before"]["problems"] == 4
    for side in ("before", "after"):
        for k in ("1", "2"):
            r = acc[side]["pass_at"][k]
            assert 0.0 <= r["low"] <= r["estimate"] <= r["high"] <= 1.0
    lines = (out / "online" / "metrics.jsonl").read_text().splitlines()
    logged = json.loads(lines[-1])
    assert {"reward/reasoning_gym", "reward/overlong_penalty"} <= set(logged)
    assert "pass@1:" in capsys.readouterr().err
