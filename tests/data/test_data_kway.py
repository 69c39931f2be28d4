"""K-way comparisons: loading (best index or scores), tokenization, collation, and a K-way reward model run."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.cli import main
from alignkit.data.config import KWayJsonlSource
from alignkit.data.kway import collate_kway, load_kway, tokenize_kway

ROWS = [
    {"prompt": "Say hi.", "responses": [" Hello there!", " No.", " Hi."], "best": 0},
    {"prompt": "Count to two.", "responses": [" one", " one two", " two one"], "scores": [0.1, 0.9, 0.3]},
    {"prompt": "Broken row", "responses": "not a list", "best": 0},
]


def _write(tmp_path, rows):
    path = tmp_path / "kway.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_tokenize_collate(tmp_path, gpt2_tokenizer):
    examples, report = load_kway(KWayJsonlSource(path=str(_write(tmp_path, ROWS))))
    assert [e.best for e in examples] == [0, 1]  # the arg-max of the scores on the second row
    assert report.dropped == 1 and "kway.jsonl:3" in report.summary()
    items, _ = tokenize_kway(examples, gpt2_tokenizer, max_length=32, max_prompt_length=16)
    batch = collate_kway(items, pad_token_id=gpt2_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["num_candidates"] == 3
    assert batch["best_index"].tolist() == [0, 1]
    # Row 4 = example 1, candidate 1: prompt then " one two" then EOS.
    real = batch["input_ids"][4][batch["attention_mask"][4].bool()].tolist()
    assert gpt2_tokenizer.decode(real) == "Count to two. one two<|endoftext|>"


def test_rows_must_share_k(tmp_path):
    rows = [ROWS[0], {"prompt": "x", "responses": [" a", " b"], "best": 1}]
    with pytest.raises(Exception, match="K must be the same"):
        load_kway(KWayJsonlSource(path=str(_write(tmp_path, rows))))


def test_kway_reward_model_trains_end_to_end(tmp_path):
    rows = [{"prompt": f"Q{i}?", "responses": [" good answer" * (1 + i % 2), " bad", " meh"], "best": 0}
            for i in range(24)]
    out = tmp_path / "rm"
    args = [
        "run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={out}",
        "model.from_config={model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
        "model.tokenizer=gpt2", "loss.name=reward_kway", "reference.mode=none", "sft.enabled=false",
        f"data.source={{kind: kway_jsonl, path: {_write(tmp_path, rows)}}}", "data.test_source=null",
        "data.test_size=8", "data.max_length=32", "data.max_prompt_length=16",
        "train.batch_size=4", "train.grad_accum=1", "train.max_steps=6", "train.warmup_steps=0", "train.lr=3e-3",
        "train.optimizer=adamw", "train.eval_every=3", "train.max_eval_examples=8",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    after = report["stages"]["preference"]["eval_after"]
    assert after["eval/loss"] < report["stages"]["preference"]["eval_before"]["eval/loss"]
    assert torch.isfinite(torch.tensor(after["eval/rewards/accuracies"]))
