"""Collation (shapes, label masks, chosen-first order), the train/test split."""

from __future__ import annotations

import pytest
import torch

from alignkit.data import (
    TokenizedPair,
    collate_preference,
    collate_sft,
    split_train_test,
)
from alignkit.data.split import held_out_count

PAD = 0


def _pairs() -> list[TokenizedPair]:
    return [
        TokenizedPair(prompt_ids=[11, 12], chosen_ids=[21, 22, 23], rejected_ids=[31], weight=1.0, index=7),
        TokenizedPair(prompt_ids=[13], chosen_ids=[24], rejected_ids=[32, 33, 34, 35, 36], weight=0.5, index=2),
    ]


def test_collate_preference_hand_checked() -> None:
    batch = collate_preference(_pairs(), pad_token_id=PAD, pad_to_multiple_of=None)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weights", "index"}
    X = -100
    assert batch["input_ids"].tolist() == [
        [11, 12, 21, 22, 23, PAD],   # pair 0 chosen
        [13, 24, PAD, PAD, PAD, PAD],  # pair 1 chosen
        [11, 12, 31, PAD, PAD, PAD],   # pair 0 rejected
        [13, 32, 33, 34, 35, 36],      # pair 1 rejected
    ]
    assert batch["labels"].tolist() == [
        [X, X, 21, 22, 23, X],
        [X, 24, X, X, X, X],
        [X, X, 31, X, X, X],
        [X, 32, 33, 34, 35, 36],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1],
    ]
    assert batch["weights"].dtype == torch.float32 and batch["weights"].tolist() == [1.0, 0.5]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [7, 2]
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long


def test_collate_pads_to_multiple_and_keeps_pad_equal_eos_labels() -> None:
    eos = 50256
    pairs = [TokenizedPair([1], [2, eos], [3, eos], 1.0, 0)]
    batch = collate_preference(pairs, pad_token_id=eos)  # GPT-2: pad id == EOS id
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][0].tolist() == [-100, 2, eos] + [-100] * 5  # the real EOS keeps its label
    assert batch["attention_mask"].sum().item() == 6


def test_collate_sft() -> None:
    batch = collate_sft(_pairs(), pad_token_id=PAD, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][:, :5].tolist() == [[-100, -100, 21, 22, 23], [-100, 24, -100, -100, -100]]
    assert batch["index"].tolist() == [7, 2]
    with pytest.raises(ValueError):
        collate_sft([], pad_token_id=PAD)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    items = list(range(100))
    train, test = split_train_test(items, 0.2, seed=3)
    assert (train, test) == split_train_test(items, 0.2, seed=3)
    assert len(test) == 20 and not set(train) & set(test) and sorted(train + test) == items
    assert train == sorted(train) and test == sorted(test)  # input order kept within each side
    assert split_train_test(items, 0.2, seed=4)[1] != test
    assert len(split_train_test(items, 7, seed=0)[1]) == 7
    assert split_train_test(items, 0, seed=0) == (items, [])
    assert [held_out_count(n, 0.1) for n in (1, 2, 5, 15, 1000)] == [0, 1, 1, 2, 100]
    with pytest.raises(ValueError):
        split_train_test(items, 100, seed=0)
    with pytest.raises(ValueError):
        split_train_test(items, 1.0, seed=0)


