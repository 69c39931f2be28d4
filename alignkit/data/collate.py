"""Pad tokenized pairs into batch tensors (right padding; the loss reads response tokens only).

Each batch kind's collate function is attached to its kind (``@LOGPS.collates``); callers ask the kind
(:meth:`~alignkit.losses.batch_kinds.BatchKind.collate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignkit.data.types import TokenizedPair
from alignkit.data.unpaired import TokenizedUnpaired
from alignkit.lazy import lazy_module
from alignkit.losses.batch_kinds import LOGPS, SCORES, UNPAIRED
from alignkit.models.padding import IGNORE_INDEX, labelled_batch

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["IGNORE_INDEX", "collate_preference", "collate_sft", "collate_unpaired"]


def _meta(pairs: Sequence[TokenizedPair] | Sequence[TokenizedUnpaired]) -> dict[str, torch.Tensor]:
    return {
        "weights": torch.tensor([p.weight for p in pairs], dtype=torch.float32),
        "index": torch.tensor([p.index for p in pairs], dtype=torch.long),
    }


@SCORES.collates
@LOGPS.collates
def collate_preference(
    pairs: Sequence[TokenizedPair], pad_token_id: int, pad_to_multiple_of: int | None = 8
) -> dict[str, torch.Tensor]:
    """Batch B pairs as 2B sequences for one concatenated forward pass: chosen rows first.

    Args:
        pairs: B tokenized pairs.
        pad_token_id: id written into padding (masked out; any valid id works).
        pad_to_multiple_of: round the padded length T up to a multiple of this (tensor-core friendly);
            None pads to the longest sequence.

    Returns:
        input_ids: (2B, T) long; rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected.
        attention_mask: (2B, T) long, 1 on real tokens.
        labels: (2B, T) long, the input id on response tokens, -100 on prompt and padding.
        weights: (B,) float32 per-example loss weights.
        index: (B,) long dataset positions (keys of cached reference log-probs).
    """
    if not pairs:
        raise ValueError("collate_preference needs at least one pair")
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    return {**labelled_batch(rows, pad_token_id, pad_to_multiple_of=pad_to_multiple_of), **_meta(pairs)}


def collate_sft(
    pairs: Sequence[TokenizedPair], pad_token_id: int, pad_to_multiple_of: int | None = 8
) -> dict[str, torch.Tensor]:
    """Batch B pairs as B prompt+chosen sequences for supervised fine-tuning.

    Returns:
        input_ids, attention_mask, labels: (B, T) long; labels are -100 except on chosen tokens.
        weights: (B,) float32. index: (B,) long.
    """
    if not pairs:
        raise ValueError("collate_sft needs at least one pair")
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs]
    return {**labelled_batch(rows, pad_token_id, pad_to_multiple_of=pad_to_multiple_of), **_meta(pairs)}


@UNPAIRED.collates
def collate_unpaired(
    items: Sequence[TokenizedUnpaired], pad_token_id: int, pad_to_multiple_of: int | None = 8
) -> dict[str, torch.Tensor]:
    """Batch B unpaired items as 2B sequences: each completion after its prompt, then after its mismatched one.

    The layout is that of a preference batch (first half, second half), so one concatenated forward and
    every reference mode give both halves' log-probs.

    Returns:
        input_ids, attention_mask, labels: (2B, T) long; rows 0..B-1 prompt+completion, rows B..2B-1
            mismatched prompt+completion (the mismatched pairs of KTO's reference point).
        desirable: (B,) bool, True where the completion is desirable.
        weights: (B,) float32. index: (B,) long.
    """
    if not items:
        raise ValueError("collate_unpaired needs at least one item")
    rows = [(i.prompt_ids, i.completion_ids) for i in items]
    rows += [(i.mismatched_prompt_ids or i.prompt_ids, i.completion_ids) for i in items]
    return {
        **labelled_batch(rows, pad_token_id, pad_to_multiple_of=pad_to_multiple_of),
        "desirable": torch.tensor([i.label for i in items], dtype=torch.bool),
        **_meta(items),
    }
