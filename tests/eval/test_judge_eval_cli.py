"""`alignkit eval RUN_DIR` on a tiny finished run: judge, report additions and plots."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main

TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 256}"


@pytest.mark.slow
def test_eval_command_adds_a_judged_win_rate_and_plots(tmp_path, hh_path):
    out = tmp_path / "run"
    args = [
        f"output_dir={out}", f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2",
        f"data.source.path={hh_path}", f"data.test_source.path={hh_path}", "data.max_examples=16",
        "data.max_length=64", "data.max_prompt_length=48", "sft.enabled=false", "train.batch_size=4",
        "train.grad_accum=1", "train.max_steps=2", "train.warmup_steps=0", "train.eval_every=null",
        "train.save_every=null",
    ]
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *args]) == 0
    assert main(["eval", str(out)]) == 2  # nothing to evaluate: no judge, no reward

    judge = ["eval.judge.kind=reward", "eval.judge.reward=vader_sentiment", "eval.num_prompts=4",
             "eval.max_new_tokens=6", "eval.batch_size=4"]
    assert main(["eval", str(out), *judge]) == 0
    report = json.loads((out / "report.json").read_text())
    (evaluation,) = report["judged"]
    assert [s["baseline"] for s in evaluation["baselines"]] == ["chosen", "base"]  # the recipe's baselines
    section = evaluation["baselines"][0]
    assert section["n"] == 4
    assert 0 <= section["win_rate"]["low"] <= section["win_rate"]["estimate"] <= section["win_rate"]["high"] <= 1
    assert report["plots"] == ["plots/win_rate.png"] and (out / "plots" / "win_rate.png").is_file()
    assert "## Judged win rate: policy vs chosen (evaluation 1)" in (out / "report.md").read_text()
    assert len((out / "judged_pairs.jsonl").read_text().splitlines()) == 4 + 2 * 4  # agreement, then 2 baselines

    assert main(["eval", str(out), *judge, "eval.baselines=[reference]", "eval.reward=vader_sentiment"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["baselines"][0]["baseline"] for e in report["judged"]] == ["chosen", "reference"]
    assert "reward_kl" in report and (out / "plots" / "reward_kl.png").is_file()
