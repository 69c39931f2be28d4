"""prepare_data: the recipe's data section to train/test pairs in one call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.data import DataConfig, DataError, prepare_data


def test_prepare_data_on_hh(hh_path: Path, gpt2_tokenizer) -> None:
    cfg = DataConfig(
        source={"kind": "hh_rlhf", "path": str(hh_path)},
        max_examples=50, test_size=0.2, max_length=96, max_prompt_length=48, seed=5,
    )
    data = prepare_data(cfg, gpt2_tokenizer)
    assert len(data.train_examples) == 40 and len(data.test_examples) == 10
    assert len(data.train) + data.train_report.dropped == 40
    assert all(p.chosen_length <= 96 and p.rejected_length <= 96 for p in data.train + data.test)
    # The fixture's long dialogues are cut, and its one pair that differs only late is dropped once cut.
    assert any(len(p.prompt_ids) == 48 for p in data.train + data.test)
    assert data.train_report.dropped + data.test_report.dropped == 1
    # the split does not depend on the tokenizer's limits
    again = prepare_data(cfg.model_copy(update={"max_length": 64, "max_prompt_length": 32}), gpt2_tokenizer)
    assert again.test_examples == data.test_examples
    assert "loading: kept" in data.summary()
    indices = [p.index for p in data.train + data.test]
    assert len(set(indices)) == len(indices) and min(p.index for p in data.test) >= 40
    assert data.report.seen == 72 and data.report.kept == len(data.train) + len(data.test)

    sft = prepare_data(cfg, gpt2_tokenizer, sft=True)
    assert all(p.rejected_ids == [] for p in sft.train)


def test_prepare_data_with_test_source_and_empty_source(tmp_path: Path, gpt2_tokenizer) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Q{i}", "chosen": " a", "rejected": " b"}) + "\n" for i in range(5)))
    test.write_text(json.dumps({"prompt": "T", "chosen": " a", "rejected": " b"}) + "\n")
    cfg = DataConfig(source={"kind": "jsonl", "path": str(train)}, test_source={"kind": "jsonl", "path": str(test)})
    data = prepare_data(cfg, gpt2_tokenizer)
    assert len(data.train) == 5 and [e.prompt for e in data.test_examples] == ["T"]

    with pytest.raises(DataError, match="generated from the model"):
        prepare_data(DataConfig(source={"kind": "sentiment", "num_prompts": 8}), gpt2_tokenizer)

    train.write_text("not json\n")
    with pytest.raises(DataError, match=r"no usable training pairs(.|\n)*train\.jsonl:1"):
        prepare_data(cfg, gpt2_tokenizer)


@pytest.mark.parametrize(("given", "kept"), [(4, 4), (0, 0), (0.25, 0.25)])
def test_a_held_out_count_stays_a_count_through_the_saved_recipe(given, kept):
    """Before, at the lowest supported pydantic (2.7, constraints-floor.txt): `test_size: 4` was read as the float
    4.0 (`float | int` tried float first), which the check then refused as a fraction out of (0, 1) when a saved
    recipe.yaml was read back. A count stays an int, a fraction a float."""
    import yaml

    cfg = DataConfig.model_validate({"source": {"kind": "jsonl", "path": "x.jsonl"}, "test_size": given})
    assert cfg.test_size == kept and type(cfg.test_size) is type(kept)
    saved = yaml.safe_dump(cfg.model_dump(mode="json"))
    again = DataConfig.model_validate(yaml.safe_load(saved))
    assert again.test_size == kept and type(again.test_size) is type(kept)
