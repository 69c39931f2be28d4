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


TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 128}"


def tiny_recipe(folder, n: int = 12) -> str:
    """A DPO recipe on a tiny GPT-2 (dropout as GPT-2's default, 0.1) and ``n`` jsonl pairs, written in ``folder``.

    Returns the recipe's path; ``folder / "run"`` is its output_dir.
    """
    import json

    rows = [{"prompt": f"\n\nHuman: Tell me about {TOPICS[i % len(TOPICS)]} ({i}).\n\nAssistant:",
             "chosen": " Happy to help! " + "It is lovely. " * (1 + i % 3), "rejected": " No." + " Go away." * (i % 2)}
            for i in range(n)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: tiny
seed: 0
output_dir: {folder / "run"}
model:
  name_or_path: tiny-gpt2
  from_config: {TINY_GPT2}
  tokenizer: gpt2
data:
  source: {{kind: jsonl, path: {folder / "pairs.jsonl"}}}
  max_length: 64
  max_prompt_length: 32
loss: {{name: dpo, beta: 0.1}}
train:
  batch_size: 4
  max_steps: 2
  lr: 0.001
  device: cpu
""")
    return str(recipe)
