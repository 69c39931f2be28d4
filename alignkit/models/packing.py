"""Padding-free forwards: pack the sequences of a right-padded batch into fewer, fuller rows.

A preference batch pads every chosen and rejected sequence to the longest one; on HH-RLHF at 256 tokens
almost half of the positions are padding, and the transformer body pays for each of them. Packing places
several sequences end to end in one row, restarts ``position_ids`` at 0 where each sequence begins and
passes no attention mask: transformers then builds a block-diagonal causal mask from the position ids
(``masking_utils.find_packed_sequence_indices``), so a token attends only to earlier tokens of its own
sequence and the hidden states equal the padded forward's (to float rounding).

Rows keep the batch's padded width as their capacity (first-fit decreasing), so attention never spans
more than the longest sequence and the number of rows falls roughly to real tokens / width.
Only architectures whose mask construction reads packed position ids are allowed (``PACKABLE_MODEL_TYPES``;
each is checked against the padded forward by a test); any other model keeps the padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from alignkit.models.padding import IGNORE_INDEX

__all__ = ["PACKABLE_MODEL_TYPES", "PackedRows", "is_right_padded", "pack_rows", "supports_packing"]


# model_type values whose decoder passes position_ids to transformers' mask construction, so that
# position ids restarting at 0 inside a row separate the sequences (tests/test_models_packing.py).
PACKABLE_MODEL_TYPES = frozenset(
    {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo", "olmo2", "gpt_neox", "granite"}
)


def supports_packing(model: nn.Module) -> bool:
    """Whether ``model`` can run packed rows (known architecture, no sliding-window layers)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKABLE_MODEL_TYPES:
        return False
    # A sliding window would need its own packed mask; keep such configurations on the padded path.
    return getattr(config, "sliding_window", None) is None or not getattr(config, "use_sliding_window", True)


@dataclass
class PackedRows:
    """A batch of N right-padded sequences laid out in R <= N rows.

    Attributes:
        input_ids: (R, C) token ids; the tail of a row that is not full holds id 0.
        position_ids: (R, C) position of each token within its own sequence (0 at each sequence start;
            the tail continues the last sequence's count, so it adds no new sequence).
        labels: (R, C) the original labels, with -100 at each sequence's first token (a first token is
            never scored: nothing precedes it) and on the tail.
        sequence: (R, C) long, the original row of each position, -1 on the tail.
    """

    input_ids: Tensor
    position_ids: Tensor
    labels: Tensor
    sequence: Tensor

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices whose lengths sum to at most ``capacity``, longest sequences placed first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def is_right_padded(attention_mask: Tensor) -> bool:
    """Whether every row of the (N, T) mask is its real tokens first, then only padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(((positions < attention_mask.sum(-1, keepdim=True)) == attention_mask.bool()).all())


def pack_rows(
    input_ids: Tensor, attention_mask: Tensor, labels: Tensor, pad_to_multiple_of: int = 8
) -> PackedRows:
    """Pack right-padded rows (N, T) into rows of width at most T (see :func:`is_right_padded`).

    Args:
        input_ids: (N, T) token ids, right padded.
        attention_mask: (N, T), 1 on each row's leading real tokens.
        labels: (N, T), -100 where a token is not scored.
        pad_to_multiple_of: round the packed width up to a multiple of this (never beyond T).

    Returns:
        The packed rows; see :class:`PackedRows`.
    """
    n, width = input_ids.shape
    lengths = attention_mask.sum(-1).tolist()
    bins = _first_fit_decreasing([int(x) for x in lengths], width)
    fill = max(sum(lengths[i] for i in b) for b in bins)
    cols = min(width, -(-fill // pad_to_multiple_of) * pad_to_multiple_of) if fill else width
    rows = len(bins)
    packed_ids = input_ids.new_zeros((rows, cols))  # the tail's ids are never attended to nor scored
    position_ids = torch.zeros((rows, cols), dtype=torch.long, device=input_ids.device)
    packed_labels = labels.new_full((rows, cols), IGNORE_INDEX)
    sequence = torch.full((rows, cols), -1, dtype=torch.long, device=input_ids.device)
    for r, members in enumerate(bins):
        offset = 0
        for i in members:
            length = int(lengths[i])
            span = slice(offset, offset + length)
            packed_ids[r, span] = input_ids[i, :length]
            position_ids[r, span] = torch.arange(length, device=input_ids.device)
            packed_labels[r, span] = labels[i, :length]
            packed_labels[r, offset] = IGNORE_INDEX
            sequence[r, span] = i
            offset += length
        if offset < cols:  # the tail continues the last sequence's positions: causal, never attended to
            start = int(position_ids[r, offset - 1]) + 1 if offset else 0
            position_ids[r, offset:] = torch.arange(start, start + cols - offset, device=input_ids.device)
    return PackedRows(packed_ids, position_ids, packed_labels, sequence)
