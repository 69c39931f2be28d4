"""The three-stage RLHF pipeline of recipes/rlhf/ end to end (SFT -> reward model -> PPO), on a tiny GPT-2.

The shipped recipes run as they are, from a working directory where their relative run folders
(runs/sft_smollm2_sentiment/model, runs/rm_smollm2_sentiment/model) are created by the earlier stages; only
the model (a tiny GPT-2 built from a config: nothing is downloaded) and the sizes are overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
RLHF = ROOT / "recipes" / "rlhf"
TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 128}"
SENTIMENT = ["data.source.num_prompts=8", "data.source.num_eval_prompts=4", "data.source.completions_per_prompt=2",
             "data.source.max_new_tokens=6", "data.source.batch_size=8", "data.source.generation_dtype=null",
             "data.max_length=48", "data.max_prompt_length=32"]
OFFLINE_TRAIN = ["train.batch_size=4", "train.max_steps=2", "train.warmup_steps=0", "train.lr=1e-3",
                 "train.eval_every=null", "train.max_eval_examples=8", "train.device=cpu"]


@pytest.mark.slow
def test_sft_then_reward_model_then_ppo_with_a_true_reward(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipes' runs/<name> folders are created here
    # 1. SFT (the tiny GPT-2 samples the sentiment pairs; SFT trains on the chosen responses).
    assert main(["run", str(RLHF / "sft_smollm2_sentiment.yaml"), "model.name_or_path=tiny-gpt2",
                 f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2", *SENTIMENT, *OFFLINE_TRAIN]) == 0
    sft = Path("runs/sft_smollm2_sentiment")
    assert (sft / "model" / "config.json").is_file()

    # 2. A Bradley-Terry reward model from the SFT model's folder (the recipe's relative path): the SFT
    #    model's causal LM samples the pairs, and the run reports held-out pairwise accuracy.
    assert main(["run", str(RLHF / "rm_smollm2_sentiment.yaml"), *SENTIMENT, "data.source.min_reward_gap=0",
                 *OFFLINE_TRAIN]) == 0
    rm = Path("runs/rm_smollm2_sentiment")
    config = json.loads((rm / "model" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    after = json.loads((rm / "report.json").read_text())["stages"]["preference"]["eval_after"]
    assert 0.0 <= after["eval/rewards/accuracies"] <= 1.0
    assert "held-out preference accuracy" in capsys.readouterr().err

    # 3. PPO against the reward model, VADER measured as the true reward, policy and anchor the SFT model.
    assert main(["online", str(RLHF / "ppo_smollm2_rm.yaml"), "adapter.target_modules=[c_attn]",
                 "prompts.num_prompts=4", "prompts.num_eval_prompts=2", "online.samples_per_prompt=2",
                 "online.max_new_tokens=6", "online.generation_batch_size=4", "online.ppo.minibatch_size=2",
                 "online.reward_batch_size=4", "train.prompts_per_step=2", "train.max_steps=3",
                 "train.warmup_steps=0", "train.device=cpu", "eval.num_prompts=2", "eval.max_new_tokens=6",
                 "eval.batch_size=4"]) == 0
    ppo = Path("runs/ppo_smollm2_rm")
    records = [json.loads(line) for line in (ppo / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:  # the proxy (reward model) and the true reward (VADER) on every update
        assert {"reward", "true_reward", "kl"} <= set(r)
        assert -1.0 <= r["true_reward"] <= 1.0
    assert (ppo / "plots" / "proxy_vs_true.png").is_file()
    report = json.loads((ppo / "report.json").read_text())
    assert report["online"]["reward_model"] == "runs/rm_smollm2_sentiment/model"
    assert report["proxy_vs_true"]["true_reward_name"] == "vader_sentiment"
    assert report["reward_kl"]["reward"] == "vader_sentiment"
