"""Deterministic batch order: the same (seed, epoch) gives the same batches on every run and rank."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset

from alignkit.data.collate import collate_preference, collate_sft
from alignkit.data.types import TokenizedPair

__all__ = ["PreferenceDataset", "iterate_batches"]


def iterate_batches(
    pairs: Sequence[TokenizedPair],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
    sort_by_length_within_chunks: int | None = None,
) -> Iterator[list[TokenizedPair]]:
    """Yield lists of ``batch_size`` pairs.

    Args:
        pairs: the tokenized pairs.
        batch_size: pairs per batch.
        shuffle: random order, seeded by ``(seed, epoch)``; False keeps the given order.
        seed: base seed.
        drop_last: skip the final short batch.
        epoch: mixed into the seed so each epoch has its own order.
        sort_by_length_within_chunks: if set (e.g. 50), cut the shuffled order into chunks of that many
            batches, sort each chunk by length and shuffle the resulting batches: similar lengths share a
            batch (less padding) while the order stays random at the scale of a chunk.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(f"{seed}:{epoch}")  # str seeds hash stably across processes (not hash())
    order = list(range(len(pairs)))
    if shuffle:
        rng.shuffle(order)
    batches = []
    if sort_by_length_within_chunks:
        chunk = batch_size * sort_by_length_within_chunks
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: pairs[i].max_length)
            batches.extend(part[b:b + batch_size] for b in range(0, len(part), batch_size))
        if drop_last:
            batches = [b for b in batches if len(b) == batch_size]  # only the last chunk's can be short
        if shuffle:
            rng.shuffle(batches)
    else:
        batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
    for batch in batches:
        yield [pairs[i] for i in batch]


class PreferenceDataset(Dataset):
    """A map-style torch Dataset over tokenized pairs, for ``DataLoader`` and distributed samplers.

    Use ``DataLoader(ds, batch_size=..., collate_fn=ds.collate)``.

    Args:
        pairs: tokenized pairs.
        pad_token_id: padding id for the collate function.
        sft: collate prompt + chosen only (``collate_sft``) instead of chosen and rejected.
        pad_to_multiple_of: passed to the collate function.
    """

    def __init__(
        self,
        pairs: Sequence[TokenizedPair],
        pad_token_id: int,
        sft: bool = False,
        pad_to_multiple_of: int | None = 8,
    ) -> None:
        self.pairs = list(pairs)
        self.pad_token_id = pad_token_id
        self.sft = sft
        self.pad_to_multiple_of = pad_to_multiple_of

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TokenizedPair:
        return self.pairs[i]

    def collate(self, batch: list[TokenizedPair]):
        """Tensors of one batch; see :func:`collate_preference` / :func:`collate_sft`."""
        fn = collate_sft if self.sft else collate_preference
        return fn(batch, self.pad_token_id, self.pad_to_multiple_of)
