"""A tiny verifiable online run end to end: a GSM8K-format source carries each prompt's reference answer, a
weighted combination of verifiable rewards scores it (each component logged), and the reward rises."""

from __future__ import annotations

import json

import pytest
from test_online_e2e import RECIPE as RLOO_RECIPE
from test_online_e2e import _one_thread, _tiny_model_folder  # noqa: F401 - one thread, autouse

from alignkit.commands.online import run_online_recipe
from alignkit.recipe.online import load_online_recipe

QUESTIONS = ["The weather today", "My favourite food", "A story about", "The city at night", "In the morning",
             "Yesterday I saw", "The cat", "A long day"]

# The task the tiny model can learn in a few updates: the reference answer of every prompt is the word "the",
# read by a regex (the tiny GPT-2's " the" starts at a few percent per token, see test_online_e2e).
RECIPE = """name: tiny_verifiable
seed: 0
model:
  name_or_path: MODEL
  tokenizer: gpt2
prompts:
  kind: gsm8k_jsonl
  path: DATA
  test_size: 2
  instruction: ''
online:
  algorithm: grpo
  rewards:
    - {name: exact_match, weight: 1.0, extract: regex, pattern: '\\b(the)\\b'}
    - {name: repetition_penalty, weight: 0.1, n: 2}
  samples_per_prompt: 4
  max_new_tokens: 6
  beta: 0.01
accuracy:
  reward: {name: exact_match, extract: regex, pattern: '\\b(the)\\b'}
  num_problems: 2
  samples: 4
  ks: [1, 4]
  max_new_tokens: 6
  batch_size: 8
""" + RLOO_RECIPE[RLOO_RECIPE.index("\ntrain:") + 1:RLOO_RECIPE.index("\neval:") + 1]  # the RLOO test's optimisation


def test_verifiable_rewards_rise_and_each_component_is_logged(tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "Write it.\n#### the"}) + "\n" for q in QUESTIONS))
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("MODEL", str(_tiny_model_folder(tmp_path / "tiny"))).replace("DATA", str(data)))
    summary = run_online_recipe(load_online_recipe(path, [f"output_dir={tmp_path / 'run'}"]))
    history = summary.results["online"].history
    assert {"reward/exact_match", "reward/repetition_penalty"} <= set(history[0])
    for h in history:  # the reward trained on is the weighted sum of the logged components
        assert h["reward"] == pytest.approx(h["reward/exact_match"] + 0.1 * h["reward/repetition_penalty"], abs=1e-6)
    first = sum(h["reward/exact_match"] for h in history[:3]) / 3
    last = sum(h["reward/exact_match"] for h in history[-3:]) / 3
    assert last > first + 0.3, (first, last)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["reward"] == "exact_match" and acc["before"]["problems"] == 2 and acc["before"]["samples_per_problem"] == 4
    for key in ("before", "after"):
        for k in ("1", "4"):
            r = acc[key]["pass_at"][k]
            assert 0.0 <= r["low"] <= r["estimate"] <= r["high"] <= 1.0
        assert acc[key]["pass_at"]["4"]["estimate"] >= acc[key]["pass_at"]["1"]["estimate"]
    assert acc["after"]["pass_at"]["1"]["estimate"] > acc["before"]["pass_at"]["1"]["estimate"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Accuracy (exact_match; 2 held-out problems, 4 samples each; 95% intervals)" in markdown
