"""A tiny offline recipe for the workflow tests: written pairs, a 1-layer GPT-2, two DPO steps."""

from __future__ import annotations

import json
from pathlib import Path

TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 128}"


def write_pairs(path: Path, n: int = 12) -> Path:
    rows = [{"prompt": f"Question {i}?", "chosen": f" A helpful answer {i}.", "rejected": f" No {i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_jsonl_recipe(tmp_path: Path) -> Path:
    """A DPO recipe on a 1-layer GPT-2 and 12 written pairs; its run folder is ``tmp_path / 'run'``."""
    data = write_pairs(tmp_path / "pairs.jsonl")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
name: folder_rules
output_dir: {tmp_path / "run"}
model: {{name_or_path: tiny, from_config: {TINY_GPT2}, tokenizer: gpt2}}
data: {{source: {{kind: jsonl, path: {data}}}, test_size: 4, max_length: 32, max_prompt_length: 16}}
loss: {{name: dpo, beta: 0.1}}
reference: {{mode: copy}}
train: {{batch_size: 4, grad_accum: 1, max_steps: 2, warmup_steps: 0, eval_every: null, save_every: 1}}
""")
    return recipe
