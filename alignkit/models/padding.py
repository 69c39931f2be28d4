"""Token rows to a padded batch: the one place sequences of ids become rectangular tensors.

Training batches, the log-probs of sampled completions, judges and the sampler's prefill all lay their
rows out here, so every padded batch follows the same rules: the attention mask marks the real tokens, and
labels (when asked for) come from each row's lengths, never from comparing ids with the pad id (GPT-2 pads
with its EOS, and the EOS that ends a response must keep its label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["IGNORE_INDEX", "labelled_batch", "pad_rows", "pad_token_rows"]

IGNORE_INDEX = -100  # label of tokens that are not scored (prompt and padding), as in torch's CE loss


def pad_token_rows(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False,
                   width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids padded to one width, on the right (training, scoring) or the left (prefill).

    Args:
        rows: B rows of token ids (at least one).
        pad_id: the id written where a row has no token (masked out, so any valid id works).
        left: pad before the tokens instead of after them.
        width: the batch width; default the longest row.

    Returns:
        input_ids and attention_mask, both (B, width) int64 on CPU; the mask is 1 on real tokens.

    Shape:
        rows: B × (L_i,) -> (B, W), W = ``width`` or max L_i.
    """
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(list(row), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def pad_rows(rows: Sequence[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """1-D tensors of values (per-token log-probs, advantages, values) stacked and right-padded with 0.

    The zeros are never read as values: callers mask them with the batch's attention mask.

    Shape:
        rows: B × (L_i,) -> (B, W), W = ``width`` or max L_i; dtype and device of the first row.
    """
    width = width if width is not None else max(r.numel() for r in rows)
    out = rows[0].new_zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, :r.numel()] = r
    return out


def labelled_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, *,
                   pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """``(prompt_ids, response_ids)`` rows, right-padded, with only the response tokens labelled.

    Args:
        rows: B rows, each a prompt and the response that follows it.
        pad_id: the padding id.
        pad_to_multiple_of: round the width up to a multiple of this (None: the longest row).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each (B, W) int64 on CPU; labels are
        ``IGNORE_INDEX`` on the prompt and the padding.
    """
    width = max(len(p) + len(r) for p, r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids, attention_mask = pad_token_rows([[*p, *r] for p, r in rows], pad_id, width=width)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (prompt, response) in enumerate(rows):
        labels[i, len(prompt) : len(prompt) + len(response)] = input_ids[i, len(prompt) : len(prompt) + len(response)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
