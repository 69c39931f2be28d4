"""The offline main job, shortened, end to end with the real SmolLM2 (slow: about two minutes on 2 cores)."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.cli import main

SHORT = [
    "data.source.num_prompts=16", "data.source.num_eval_prompts=8", "data.source.max_new_tokens=16",
    "data.source.batch_size=32", "train.batch_size=4", "train.max_steps=4", "train.eval_every=2",
    "train.save_every=2", "train.max_eval_examples=8", "eval.num_prompts=8", "eval.samples_per_prompt=2",
    "eval.max_new_tokens=16",
]


@pytest.mark.slow
def test_offline_main_job_shortened(tmp_path, smollm2_folder, capsys):
    out = tmp_path / "run"
    assert main(["run", "recipes/dpo_smollm2_sentiment.yaml", f"output_dir={out}", *SHORT]) == 0
    report = json.loads((out / "report.json").read_text())
    pref = report["stages"]["preference"]
    assert pref["steps"] == 4
    # LoRA starts as the identity and the cached reference is the adapter-off model: DPO starts at log 2.
    assert pref["eval_before"]["eval/loss"] == pytest.approx(math.log(2), abs=1e-4)
    rk = report["reward_kl"]
    assert rk["reward"] == "vader_sentiment" and rk["n_prompts"] == 8
    assert rk["before"]["kl"]["estimate"] == 0.0
    for side in ("before", "after"):
        reward = rk[side]["reward"]
        assert -1.0 <= reward["low"] <= reward["estimate"] <= reward["high"] <= 1.0
    assert math.isfinite(rk["after"]["kl"]["estimate"])
    assert report["parameters"]["trainable"] < report["parameters"]["total"] / 20  # LoRA only: 3.5%
    assert (out / "model" / "alignkit_adapter.safetensors").is_file()
    assert "mean reward (vader_sentiment" in capsys.readouterr().err
