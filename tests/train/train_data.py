"""Small real preference data for trainer tests: HH pairs tokenized with the GPT-2 tokenizer."""

from __future__ import annotations

from alignkit.data import PreferenceExample, tokenize_pairs

TOPICS = ["the weather", "a library", "trains", "soup", "a garden", "music", "the sea", "chess"]


def tiny_pairs(tokenizer, n: int = 16):
    """n short synthetic-but-tokenized pairs (chosen polite, rejected curt) with distinct lengths."""
    examples = [
        PreferenceExample(
            prompt=f"\n\nHuman: Tell me about {TOPICS[i % len(TOPICS)]} ({i}).\n\nAssistant:",
            chosen=" Happy to help! " + "It is lovely. " * (1 + i % 3),
            rejected=" No." + " Go away." * (i % 2),
        )
        for i in range(n)
    ]
    pairs, report = tokenize_pairs(examples, tokenizer, max_length=64, max_prompt_length=32)
    assert len(pairs) == n, report.summary()
    return pairs
