"""The demo recipe (recipes/dpo_smollm2_sentiment.yaml) shrunk to seconds: a tiny Llama saved as a local
folder, a few prompts and steps; everything else (LoRA, cached reference, sentiment pairs, eval) as shipped."""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = "recipes/dpo_smollm2_sentiment.yaml"


def tiny_llama_folder(folder: Path, seed: int = 0) -> Path:
    """A 1-layer Llama saved with save_pretrained (GPT-2's vocabulary), as a user's local base model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_demo_overrides(base: Path, out: Path) -> list[str]:
    """Overrides that make the demo recipe run in seconds on ``base``, into ``out``."""
    return [
        f"output_dir={out}", f"model.name_or_path={base}", "model.tokenizer=gpt2",
        "data.source.num_prompts=8", "data.source.num_eval_prompts=4", "data.source.completions_per_prompt=2",
        "data.source.max_new_tokens=4", "data.source.batch_size=8", "data.max_length=48",
        "data.max_prompt_length=32", "train.epochs=1", "train.batch_size=4", "train.warmup_steps=0",
        "train.eval_every=null", "train.save_every=null", "train.max_eval_examples=4", "eval.num_prompts=4",
        "eval.samples_per_prompt=1", "eval.max_new_tokens=4", "eval.batch_size=4",
    ]


def demo_command() -> list[str]:
    """The arguments `make demo` gives `alignkit` (read from the Makefile, so the test runs what it runs)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    command = next(line.strip() for line in lines[start + 1:] if line.strip().startswith("$(BIN)/alignkit"))
    return shlex.split(command)[1:]
