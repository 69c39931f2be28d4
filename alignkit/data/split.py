"""A seeded, deterministic train/test split of examples.

The split is made on examples *before* tokenization, so which pairs are held out depends on the data
and the seed only, never on the tokenizer or the length limits: changing the model keeps the test set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["split_train_test", "held_out_count"]

T = TypeVar("T")


def held_out_count(n: int, test_size: float | int) -> int:
    """How many of ``n`` examples go to the test set.

    A fraction in (0, 1) rounds to the nearest count, at least 1 and at most ``n - 1`` when ``n >= 2``;
    an int is a count and must leave at least one training example.
    """
    if isinstance(test_size, bool):
        raise ValueError("test_size must be a fraction or a count, not a bool")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size fraction must be in (0, 1), got {test_size}")
        return min(max(round(n * test_size), 1), n - 1) if n >= 2 else 0
    if test_size < 0 or (test_size and test_size >= n):
        raise ValueError(f"test_size {test_size} must be >= 0 and leave training examples (have {n})")
    return test_size


def split_train_test(
    examples: Sequence[T], test_size: float | int, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Split into (train, test): a seeded random subset is held out; both keep the input order.

    Same ``examples``, ``test_size`` and ``seed`` -> the same split, on any machine (Python's
    ``random.Random`` is stable across platforms and versions for ``shuffle`` of a range).
    """
    n_test = held_out_count(len(examples), test_size)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_test])
    train = [ex for i, ex in enumerate(examples) if i not in held_out]
    test = [ex for i, ex in enumerate(examples) if i in held_out]
    return train, test
