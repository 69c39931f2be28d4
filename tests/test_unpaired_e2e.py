"""Unpaired objectives end to end on a tiny GPT-2: KTO from an unpaired jsonl file, BCO's reward shift
through a resume, and KTO beside DPO in `alignkit compare` (the pairs split into unpaired examples)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from conftest import interrupt_fit, make_tiny_gpt2

from alignkit.cli import main
from alignkit.data import DataConfig, collate_unpaired, prepare_data
from alignkit.data.config import UnpairedJsonlSource
from alignkit.losses import build_objective
from alignkit.models.reference import FrozenCopyReference
from alignkit.train.config import TrainConfig
from alignkit.train.trainer import Trainer

RECIPE = "recipes/dpo_gpt2_hh.yaml"
TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 1024}"
PROMPTS = ["Name a fruit.", "Say something kind.", "What is two plus two?", "Describe the sky.",
           "Give me a color.", "How are you today?"]


def write_feedback(path):
    """12 rows: each prompt with a desirable and an undesirable completion, in the documented format."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({"prompt": prompt, "completion": f" A good answer number {i}.", "label": True})
        rows.append({"prompt": prompt, "completion": f" bad {i}", "label": False})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny(*extra):
    return [f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2", "data.max_length=48", "data.max_prompt_length=32",
            "sft.enabled=false", "train.batch_size=4", "train.grad_accum=2", "train.max_steps=2",
            "train.warmup_steps=0", "train.lr=1e-3", "train.optimizer=adamw", "train.eval_every=2",
            "train.max_eval_examples=4", "train.save_every=2", "eval.reward=vader_sentiment", "eval.num_prompts=2",
            "eval.samples_per_prompt=2", "eval.max_new_tokens=4", "eval.batch_size=4", *extra]


def test_kto_runs_from_an_unpaired_jsonl_file(tmp_path, capsys):
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    out = tmp_path / "kto"
    args = ["run", RECIPE, *_tiny(f"data.source={{kind: unpaired_jsonl, path: {feedback}}}", "data.test_source=null",
                                  "data.test_size=4", "loss={name: kto, beta: 0.5}", f"output_dir={out}")]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    labels = report["labels"]
    assert labels["train"]["desirable"] + labels["train"]["undesirable"] == 8
    assert sum(labels["heldout"].values()) == 4
    records = [json.loads(line) for line in (out / "preference" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert len(trained) == 2 and all(r["kl"] >= 0 for r in trained)
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(trained[-1])
    assert "desirable / " in capsys.readouterr().err


def _bco_trainer(run_dir, items, tokenizer, **cfg):
    model = make_tiny_gpt2(seed=0)
    return Trainer(model, build_objective({"name": "bco", "beta": 0.5}),
                   TrainConfig(lr=1e-2, batch_size=4, max_steps=4, save_every=1, precision="fp32", **cfg), train_pairs=items,
                   collate=partial(collate_unpaired, pad_token_id=tokenizer.pad_token_id), run_dir=run_dir,
                   reference=FrozenCopyReference(model), stage="preference")


def test_bco_reward_shift_survives_a_resume(tmp_path, gpt2_tokenizer):
    """δ after 4 steps equals that of an uninterrupted run when the run is killed after step 2 and resumed."""
    cfg = DataConfig(source=UnpairedJsonlSource(path=str(write_feedback(tmp_path / "f.jsonl"))), test_size=0,
                     max_length=48, max_prompt_length=32)
    items = prepare_data(cfg, gpt2_tokenizer).train
    whole = _bco_trainer(tmp_path / "whole", items, gpt2_tokenizer)
    whole.fit()
    assert whole.loss_state is not None and whole.loss_state.to_json()["bco"]["count"] == 16
    assert whole.loss_state.to_json()["bco"]["delta"] != 0.0

    interrupt_fit(_bco_trainer(tmp_path / "cut", items, gpt2_tokenizer), at_step=2)
    resumed = _bco_trainer(tmp_path / "cut", items, gpt2_tokenizer)
    resumed.fit(resume=True)
    assert resumed.loss_state is not None
    assert resumed.loss_state.to_json()["bco"] == pytest.approx(whole.loss_state.to_json()["bco"])
    last = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()][-1]
    first = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["delta"] == pytest.approx(first["delta"]) and last["loss"] == pytest.approx(first["loss"])


def test_compare_runs_kto_beside_dpo_on_the_same_pairs(hh_path, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", RECIPE, "--losses", "dpo,kto", *_tiny(f"data.source.path={hh_path}",
                                                             f"data.test_source.path={hh_path}",
                                                             "data.max_examples=12", "train.grad_accum=1"),
            "--out", str(out)]
    assert main(args) == 0
    rows = {r["label"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    assert [rows[k]["status"] for k in ("dpo", "kto")] == ["trained", "trained"]
    assert rows["kto"]["steps"] == 2 and rows["kto"]["kl"] is not None and rows["kto"]["reward"] is not None
    kto = json.loads((out / "kto" / "report.json").read_text())
    dpo = json.loads((out / "dpo" / "report.json").read_text())
    # The same pairs: KTO trains on each pair's two responses, one desirable and one undesirable.
    assert kto["labels"]["train"] == {"desirable": dpo["train_pairs"], "undesirable": dpo["train_pairs"]}
    assert "| kto | trained |" in (out / "comparison.md").read_text()
