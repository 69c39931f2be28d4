"""Dropout is off in preference training by default, so DPO starts at exactly log 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from torch import nn
from train_data import tiny_recipe

from alignkit.commands.run import run_recipe
from alignkit.recipe import load_recipe
from alignkit.train.dropout import disable_dropout


def test_disable_dropout_zeroes_modules_and_attention_attributes_but_not_the_config():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    assert disable_dropout(gpt2) > 0
    assert all(m.p == 0.0 for m in gpt2.modules() if isinstance(m, nn.Dropout))
    assert gpt2.config.resid_pdrop == 0.1  # a saved model keeps its own settings
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, attention_dropout=0.1))
    assert disable_dropout(llama) == 2  # one float attribute per attention layer
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in llama.model.layers)
    assert disable_dropout(llama) == 0


def _first_loss(tmp_path: Path, *overrides: str) -> float:
    recipe = load_recipe(tiny_recipe(tmp_path), ["train.max_steps=1", *overrides])
    run_recipe(recipe)
    first = json.loads((tmp_path / "run" / "preference" / "metrics.jsonl").read_text().splitlines()[0])
    return first["loss"]


def test_dpo_starts_at_log_2_with_the_default_and_not_with_dropout(tmp_path):
    """A GPT-2 config keeps its 0.1 dropout; before, the first DPO loss was log 2 plus dropout noise."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _first_loss(tmp_path / "a") == pytest.approx(math.log(2), abs=1e-6)
    assert abs(_first_loss(tmp_path / "b", "model.disable_dropout=false") - math.log(2)) > 1e-4
