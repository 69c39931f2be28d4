"""Loading models and tokenizers from the recipe's model section, offline."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError

from alignkit.models.config import ModelConfig, ReferenceConfig
from alignkit.models.load import (
    ModelLoadError,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model_path,
)
from alignkit.models.logps import reward_scores

TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 50257, "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}


def test_model_config_is_strict_and_documented():
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig(name_or_path="gpt2", learning_rate=1.0)
    with pytest.raises(ValidationError, match="model_type"):
        ModelConfig(name_or_path="gpt2", from_config={"n_layer": 2})
    with pytest.raises(ValidationError, match="dtype"):
        ModelConfig(name_or_path="gpt2", dtype="float8")
    with pytest.raises(ValidationError, match="logps_chunk_size"):
        ModelConfig(name_or_path="gpt2", logps_chunk_size=0)
    for name, field in {**ModelConfig.model_fields, **ReferenceConfig.model_fields}.items():
        assert field.description, f"{name} needs a description"


def test_reference_config_modes():
    assert ReferenceConfig().mode == "copy"
    assert ReferenceConfig(mode="cached", name_or_path="some/folder").name_or_path == "some/folder"
    with pytest.raises(ValidationError, match="mode"):
        ReferenceConfig(mode="frozen")
    with pytest.raises(ValidationError, match="adapters_off"):
        ReferenceConfig(mode="adapters_off", name_or_path="other")


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_load_causal_lm_from_config(dtype, expected):
    cfg = ModelConfig(name_or_path="gpt2", from_config=TINY_GPT2, dtype=dtype, attn_implementation="eager",
                      gradient_checkpointing=True)
    model = load_causal_lm(cfg, "cpu")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_layer == 1 and model.config.n_embd == 16
    assert next(model.parameters()).dtype == expected
    assert model.config._attn_implementation == "eager"
    # transformers renamed gradient to activation checkpointing during 5.x (the floor, 5.15, has the old name).
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_bad_from_config_names_the_field():
    with pytest.raises(ModelLoadError, match="model.from_config"):
        load_causal_lm(ModelConfig(name_or_path="x", from_config={"model_type": "no-such-architecture"}))


def test_hub_id_offline_raises_a_clear_error():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(ModelConfig(name_or_path="someone/not-a-local-model"))
    message = str(info.value)
    assert "'someone/not-a-local-model'" in message and "model.name_or_path" in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "smollm2-135m-instruct" in message
    assert time.perf_counter() - start < 30, "offline failures must be immediate (a Hub retry loop takes ~54 s)"
    with pytest.raises(ModelLoadError, match="model.tokenizer"):
        load_tokenizer(ModelConfig(name_or_path="gpt2", tokenizer="someone/not-a-tokenizer"))


def test_broken_local_folder_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="local folder"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path)))


def test_gpt2_tokenizer_alias_is_offline_and_pads_right():
    tok = load_tokenizer(ModelConfig(name_or_path="anything", tokenizer="gpt2", from_config=TINY_GPT2))
    assert len(tok) == 50257
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.padding_side == "right"
    assert tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's ids, known by heart


def test_saved_folder_round_trip(tmp_path, gpt2_tokenizer):
    model = load_causal_lm(ModelConfig(name_or_path="x", from_config=TINY_GPT2))
    model.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path))
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    again = load_causal_lm(cfg)
    torch.testing.assert_close(again.transformer.wte.weight, model.transformer.wte.weight)
    assert load_tokenizer(cfg).padding_side == "right"


def test_reward_model_from_config_scores_the_last_real_token():
    cfg = ModelConfig(name_or_path="x", from_config=TINY_GPT2)
    torch.manual_seed(0)
    model = load_reward_model(cfg, "cpu").eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == 50256
    rows = [[464, 3290, 318], [40, 588, 340, 845, 881], [10]]
    width = max(map(len, rows))
    input_ids = torch.full((3, width), 50256)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        scores = reward_scores(model, input_ids, mask)
        # Each row alone, unpadded, through the model's own pooling.
        alone = torch.stack([model(input_ids=torch.tensor([row])).logits[0, 0] for row in rows])
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
