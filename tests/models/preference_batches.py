"""Small tokenized preference pairs and a collate function for the models tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD_ID = 50256


def make_pairs(n: int, vocab_size: int = 50257, seed: int = 0) -> list[dict]:
    """``n`` pairs with prompts of 2-5 tokens and responses of 1-6 tokens (token ids below the pad id)."""
    gen = torch.Generator().manual_seed(seed)
    hi = min(vocab_size, PAD_ID) - 1

    def ids(lo: int, hi_len: int) -> list[int]:
        length = int(torch.randint(lo, hi_len + 1, (1,), generator=gen))
        return torch.randint(0, hi, (length,), generator=gen).tolist()

    return [
        {"index": i, "prompt_ids": ids(2, 5), "chosen_ids": ids(1, 6), "rejected_ids": ids(1, 6)}
        for i in range(n)
    ]


def collate(pairs: Sequence[dict], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """(2B, T) right-padded batch, chosen rows first; labels are -100 on prompt and padding."""
    rows = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (prompt, response) in enumerate(rows):
        seq = prompt + response
        input_ids[r, : len(seq)] = torch.tensor(seq)
        attention_mask[r, : len(seq)] = 1
        labels[r, len(prompt) : len(seq)] = torch.tensor(response)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": torch.tensor([p["index"] for p in pairs]),
    }
