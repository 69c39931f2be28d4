"""`alignkit run` end to end on the shipped GPT-2/HH recipe, with a tiny GPT-2 and the shipped HH fixture."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main

TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 256}"


def _overrides(hh_path, out, *extra):
    return [
        f"output_dir={out}",
        f"model.from_config={TINY_GPT2}",
        "model.tokenizer=gpt2",
        f"data.source.path={hh_path}",
        f"data.test_source.path={hh_path}",
        "data.max_examples=24",
        "data.max_length=96",
        "data.max_prompt_length=64",
        "sft.batch_size=4", "sft.grad_accum=1", "sft.max_steps=2", "sft.warmup_steps=0", "sft.lr=1e-3",
        "sft.eval_every=null",
        "train.batch_size=4", "train.grad_accum=2", "train.max_steps=4", "train.warmup_steps=1", "train.lr=1e-3",
        "train.optimizer=adamw", "train.eval_every=2", "train.max_eval_examples=8", "train.save_every=2",
        *extra,
    ]


def test_dpo_gpt2_hh_recipe_runs_end_to_end(tmp_path, hh_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *_overrides(hh_path, out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pref = report["stages"]["preference"]
    assert pref["steps"] == 4 and report["stages"]["sft"]["steps"] == 2
    # The reference is a frozen copy of the SFT model: DPO loss starts at exactly log 2.
    assert pref["eval_before"]["eval/loss"] == pytest.approx(0.6931, abs=1e-4)
    assert "eval/rewards/accuracies" in pref["eval_after"]
    assert (out / "recipe.yaml").is_file() and (out / "report.md").is_file()
    assert (out / "model" / "config.json").is_file()
    records = [json.loads(line) for line in (out / "preference" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert "held-out preference accuracy" in capsys.readouterr().err


def test_without_local_copies_the_recipe_stops_with_a_clear_message(capsys, tmp_path):
    # output_dir in tmp_path: the refused run must not leave a folder in the clone that a second run of the
    # suite then finds as an interrupted run.
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path" in err and "Traceback" not in err


def test_reward_model_recipe_trains_a_scalar_head(tmp_path, hh_path):
    """Swapping the objective to a Bradley-Terry reward model loads a sequence-classification model."""
    out = tmp_path / "rm"
    args = _overrides(hh_path, out, "loss.name=reward_bt", "sft.enabled=false", "reference.mode=none")
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *args]) == 0
    report = json.loads((out / "report.json").read_text())
    after = report["stages"]["preference"]["eval_after"]
    assert 0.0 <= after["eval/rewards/accuracies"] <= 1.0
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]


def test_resume_continues_a_finished_run_without_retraining(tmp_path, hh_path):
    out = tmp_path / "run"
    args = _overrides(hh_path, out, "sft.enabled=false")
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *args]) == 0
    first = (out / "preference" / "metrics.jsonl").read_text()
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *args, "--resume"]) == 0
    assert (out / "preference" / "metrics.jsonl").read_text() == first
