"""Unpaired feedback: rows of a jsonl file or a dataset, pairs split into unpaired examples, the unpaired
batch, and the recipe rules between unpaired data and losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.data import DataConfig, PrepareContext, collate_unpaired, label_counts, prepare_data
from alignkit.data.config import HHRLHFSource, UnpairedHFDatasetSource, UnpairedJsonlSource
from alignkit.data.types import MALFORMED, NO_ASSISTANT
from alignkit.data.unpaired_sources import load_unpaired
from alignkit.losses import UNPAIRED
from alignkit.recipe import RecipeError, load_recipe

GOOD_ROWS = [
    {"prompt": "How do I boil an egg?", "completion": " Put it in boiling water for nine minutes.", "label": True},
    {"prompt": "How do I boil an egg?", "completion": " Eggs cannot be boiled.", "label": False},
    {"prompt": "Name a color.", "completion": " Blue.", "label": True},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}], "label": True},
    {"prompt": [{"role": "user", "content": "Count to two."}],
     "completion": [{"role": "assistant", "content": "One, three."}], "label": False},
    {"prompt": "What is 2 + 2?", "completion": " 5", "label": False},
]
BAD_LINES = [
    json.dumps({"prompt": "p", "completion": " c", "label": "yes"}),  # line 7: not a bool
    json.dumps({"prompt": "p", "label": True}),  # line 8: no completion
    "{not json",  # line 9
    json.dumps({"prompt": "p", "completion": "  ", "label": True}),  # line 10: empty
    json.dumps({"messages": [{"role": "user", "content": "q"}], "label": False}),  # line 11: no assistant turn
]


def write_feedback(path: Path, rows: list[dict] | None = None) -> Path:
    lines = [json.dumps(r) for r in (GOOD_ROWS if rows is None else rows)] + BAD_LINES
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_are_read_and_unusable_ones_counted_with_their_line(tmp_path):
    path = write_feedback(tmp_path / "feedback.jsonl")
    examples, report = load_unpaired(UnpairedJsonlSource(path=str(path)))
    assert [e.label for e in examples] == [True, False, True, True, False, False]
    assert report.seen == 11 and report.kept == 6
    assert report.reasons[MALFORMED] == 3 and report.reasons[NO_ASSISTANT] == 1
    summary = report.summary()
    assert "feedback.jsonl:7: field 'label' must be true or false (got 'yes')" in summary
    assert "feedback.jsonl:8: missing field 'completion'" in summary and "feedback.jsonl:9: invalid JSON" in summary
    said_hi = examples[3]
    assert said_hi.prompt == [{"role": "user", "content": "Say hi."}]
    assert said_hi.completion == [{"role": "assistant", "content": "Hi!"}]
    assert said_hi.chosen == said_hi.completion and examples[1].chosen is None  # evaluation reads desirable ones


def test_a_dataset_with_those_columns(tmp_path):
    import datasets

    datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")} for r in GOOD_ROWS[:3]]) \
        .save_to_disk(str(tmp_path / "ds"))
    examples, report = load_unpaired(UnpairedHFDatasetSource(name=str(tmp_path / "ds")))
    assert [e.label for e in examples] == [True, False, True] and report.seen == 3
    with pytest.raises(ValueError, match="data.source.label_field: column 'thumbs' not in dataset"):
        load_unpaired(UnpairedHFDatasetSource(name=str(tmp_path / "ds"), label_field="thumbs"))


def test_prepared_items_carry_labels_and_a_mismatched_prompt(tmp_path, gpt2_tokenizer):
    path = write_feedback(tmp_path / "feedback.jsonl")
    cfg = DataConfig(source=UnpairedJsonlSource(path=str(path)), test_size=2, max_length=64, max_prompt_length=32)
    data = prepare_data(cfg, gpt2_tokenizer)
    assert len(data.train) == 4 and len(data.test) == 2
    assert sorted(i.index for i in data.train + data.test) == list(range(6))
    assert sum(label_counts(data.train)) + sum(label_counts(data.test)) == 6
    for item in data.train:  # another example's prompt, short enough for the completion to fit
        assert item.mismatched_prompt_ids != item.prompt_ids
        assert len(item.mismatched_prompt_ids) + len(item.completion_ids) <= cfg.max_length


def test_pairs_split_into_a_desirable_and_an_undesirable_example(hh_path, gpt2_tokenizer):
    cfg = DataConfig(source=HHRLHFSource(path=str(hh_path)), test_size=4, max_examples=12, max_length=64,
                     max_prompt_length=32)
    pairs = prepare_data(cfg, gpt2_tokenizer)
    unpaired = prepare_data(cfg, gpt2_tokenizer, PrepareContext(unpaired=True))
    assert len(unpaired.train) == 2 * len(pairs.train) and len(unpaired.test) == 2 * len(pairs.test)
    assert len(unpaired.train_examples) == 2 * len(pairs.train_examples)
    for pair, (good, bad) in zip(pairs.train, zip(unpaired.train[::2], unpaired.train[1::2], strict=True),
                                 strict=True):
        assert (good.label, bad.label) == (True, False)
        assert good.prompt_ids == bad.prompt_ids == pair.prompt_ids
        assert (good.completion_ids, bad.completion_ids) == (pair.chosen_ids, pair.rejected_ids)
        assert (good.index, bad.index) == (2 * pair.index, 2 * pair.index + 1)
        assert good.mismatched_prompt_ids != good.prompt_ids  # never its own pair's prompt
    assert unpaired.train_examples[2 * pairs.train[0].index].completion == pairs.train_examples[0].chosen


def test_an_unpaired_batch_is_completions_then_their_mismatched_pairs(tmp_path, gpt2_tokenizer):
    path = write_feedback(tmp_path / "feedback.jsonl")
    cfg = DataConfig(source=UnpairedJsonlSource(path=str(path)), test_size=0, max_length=64, max_prompt_length=32)
    items = prepare_data(cfg, gpt2_tokenizer).train[:3]
    batch = collate_unpaired(items, pad_token_id=gpt2_tokenizer.eos_token_id, pad_to_multiple_of=None)
    assert batch["input_ids"].shape[0] == 6
    assert batch["desirable"].tolist() == [i.label for i in items]
    for row, item in enumerate(items):
        for offset, prompt in ((0, item.prompt_ids), (3, item.mismatched_prompt_ids)):
            n = len(prompt) + len(item.completion_ids)
            assert batch["input_ids"][row + offset, :n].tolist() == prompt + item.completion_ids
            scored = batch["labels"][row + offset] != -100
            assert int(scored.sum()) == len(item.completion_ids)
    assert torch.equal(batch["index"], torch.tensor([i.index for i in items]))


RECIPE = "recipes/dpo_gpt2_hh.yaml"


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        (["data.source={kind: unpaired_jsonl, path: FEEDBACK}", "data.test_source=null"], "data.source.kind",
         "gives unpaired examples"),
        (["loss={name: kto}", "data.unpaired=false", "sft.enabled=false"], "data.unpaired", "set it to true"),
        (["data.unpaired=true"], "data.unpaired", "which only a loss reading unpaired reads (bco, kto)"),
        (["loss={name: kto}", "sft.enabled=true"], "sft.enabled", "not supported"),
    ],
)
def test_recipe_rules_between_unpaired_data_and_losses(tmp_path, hh_path, overrides, where, message):
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    base = [f"data.source.path={hh_path}", f"data.test_source.path={hh_path}"]
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, base + [o.replace("FEEDBACK", str(feedback)) for o in overrides])
    assert where in str(err.value) and message in str(err.value)


def test_a_paired_recipe_runs_kto_without_a_switch(hh_path):
    """Unset, data.unpaired follows the loss: swapping the objective is enough (as for any loss)."""
    recipe = load_recipe(RECIPE, [f"data.source.path={hh_path}", f"data.test_source.path={hh_path}",
                                  "loss={name: kto}", "sft.enabled=false"])
    assert recipe.data.unpaired is None and recipe.objective().inputs is UNPAIRED
