"""A quantized frozen base (``model.quantization``, torchao on CPU) with LoRA or a bottleneck adapter on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import single_thread
from pydantic import ValidationError

from alignkit.models import ModelConfig, QuantizationError, load_causal_lm
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.models.quantization import quantized_layers
from alignkit.peft import adapters_disabled, apply_adapter
from alignkit.recipe import quantization_problems
from alignkit.workflow.model_io import MANIFEST_FILE, load_run_model, save_model

pytest.importorskip("torchao")

VOCAB = 512
TINY_LLAMA = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}
QUANT = {"int8": {"bits": 8}, "int4": {"bits": 4, "group_size": 16}}
# Largest |logit error| of the quantized base, as a share of the largest |logit| of the fp32 model (tiny Llama,
# seed 0; measured 0.55% int8, 11% int4): int8 keeps one scale per row, int4 one per 16 weights.
TOLERANCE = {"int8": 0.02, "int4": 0.2}
ADAPTERS = {
    "lora": {"kind": "lora", "r": 4, "alpha": 8},
    "bottleneck": {"kind": "bottleneck", "placement": "parallel", "bottleneck_size": 8},
    "bottleneck-from-mlp": {"kind": "bottleneck", "placement": "parallel", "init": "from_mlp", "bottleneck_size": 8},
}
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _load(quant: dict | None, **update) -> torch.nn.Module:
    torch.manual_seed(0)  # the same random base every call
    return load_causal_lm(ModelConfig(name_or_path="tiny", from_config=TINY_LLAMA, quantization=quant, **update))


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bits", list(QUANT))
def test_only_the_block_linears_are_quantized_and_the_base_is_frozen(bits: str) -> None:
    model = _load(QUANT[bits])
    layers = quantized_layers(model)
    assert {name.rpartition(".")[2] for name in layers} == BLOCK_LINEARS
    assert len(layers) == 2 * len(BLOCK_LINEARS)
    assert model.lm_head.weight.dtype == torch.float32 and type(model.lm_head.weight) is torch.nn.Parameter
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bits", list(QUANT))
def test_quantized_logits_stay_close_to_fp32(bits: str) -> None:
    with torch.no_grad():
        full = _load(None)(_ids()).logits
        quantized = _load(QUANT[bits])(_ids()).logits
    error = (quantized - full).abs().max() / full.abs().max()
    assert 0 < error < TOLERANCE[bits], error.item()


@pytest.mark.parametrize("bits", list(QUANT))
def test_input_gradient_equals_the_dequantized_matmuls(bits: str) -> None:
    """Backward dequantizes again instead of keeping each layer's dense weight: same gradient as F.linear."""
    layer = _load(QUANT[bits]).model.layers[0].mlp.down_proj
    x = torch.randn(3, 5, 64, requires_grad=True)
    layer(x).square().sum().backward()
    dense_x = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(dense_x, layer.weight.dequantize(), layer.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, dense_x.grad)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("bits", list(QUANT))
def test_adapter_trains_on_the_quantized_base_and_adapters_off_is_that_base(bits: str, adapter: str) -> None:
    model, ids = _load(QUANT[bits]), _ids()
    with torch.no_grad():
        base_logits = model(ids).logits
    frozen = {n: p.dequantize().clone() for n, p in model.named_parameters() if hasattr(p, "qdata")}
    apply_adapter(model, ADAPTERS[adapter])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()  # through the dequantized matmuls to the adapters
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02, losses
    for name, param in model.named_parameters():
        if hasattr(param, "qdata"):
            assert torch.equal(param.dequantize(), frozen[name.replace(".base_layer", "")]), name
    with torch.no_grad(), adapters_disabled(model):
        assert torch.equal(model(ids).logits, base_logits)


def test_settings_that_cannot_work_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="bits"):
        ModelConfig(name_or_path="x", quantization={"bits": 3})
    model = ModelConfig(name_or_path="x", from_config=TINY_LLAMA, quantization={"bits": 8})
    problems = dict(quantization_problems(model, "none", "cpu", reference_mode="copy", strategy="fsdp"))
    assert "full fine-tuning" in problems[("model", "quantization")]
    assert "adapters_off" in problems[("reference", "mode")]
    assert "fsdp" in problems[("distributed", "strategy")]
    assert quantization_problems(model, "lora", "cpu", reference_mode="adapters_off") == []
    bnb = model.model_copy(update={"quantization": model.quantization.model_copy(update={"backend": "bitsandbytes"})})
    assert "CUDA" in dict(quantization_problems(bnb, "lora", "cpu"))[("model", "quantization", "backend")]
    with pytest.raises(QuantizationError, match=r"model\.quantization\.backend: bitsandbytes"):
        load_causal_lm(bnb)
    with pytest.raises(QuantizationError, match=r"model\.quantization\.group_size: 128 does not divide"):
        _load({"bits": 4})
    gpt2 = {"model_type": "gpt2", "vocab_size": VOCAB, "n_layer": 1, "n_embd": 32, "n_head": 2}
    with pytest.raises(QuantizationError, match="Conv1D"):
        load_causal_lm(ModelConfig(name_or_path="x", from_config=gpt2, quantization={"bits": 8}))


def _trained(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """``model`` with an adapter whose output side is no longer zero (as after training)."""
    apply_adapter(model, ADAPTERS[adapter])
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and ("lora_B" in name or ".up." in name):
                param.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("bits", list(QUANT))
def test_model_folder_says_what_it_holds_and_reloads(tmp_path: Path, bits: str) -> None:
    tokenizer, ids = offline_gpt2_tokenizer(), _ids()
    # A named base: the folder holds the adapter alone and names the base and its quantization.
    base_dir = tmp_path / "base"
    _load(None).save_pretrained(base_dir)
    policy = _trained(load_causal_lm(ModelConfig(name_or_path=str(base_dir), quantization=QUANT[bits])), "lora")
    assert save_model(policy, tokenizer, tmp_path / "named" / "model") == "adapter_only"
    manifest = json.loads((tmp_path / "named" / "model" / MANIFEST_FILE).read_text())
    assert manifest["base_model"]["name_or_path"] == str(base_dir.resolve())
    assert manifest["quantization"]["bits"] == QUANT[bits]["bits"] and manifest["adapter"] == "lora"
    assert not list((tmp_path / "named" / "model").glob("model*.safetensors"))
    reloaded, _ = load_run_model(tmp_path / "named")
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, policy(ids).logits)  # the same quantized base, re-made

    # A base built from a config has no name: its dequantized weights are saved with the adapter.
    policy = _trained(_load(QUANT[bits]), "bottleneck")
    assert save_model(policy, tokenizer, tmp_path / "built" / "model") == "dequantized_base_and_adapter"
    reloaded, _ = load_run_model(tmp_path / "built")
    assert not quantized_layers(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, policy(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", list(QUANT))
def test_the_reference_cache_fingerprints_a_quantized_model_by_its_stored_integers(bits: str) -> None:
    from alignkit.models.reference_cache import model_fingerprint

    model = _load(QUANT[bits])
    fingerprint = model_fingerprint(model)
    assert fingerprint == model_fingerprint(_load(QUANT[bits]))  # the same base, quantized again
    other = "int4" if bits == "int8" else "int8"
    assert fingerprint != model_fingerprint(_load(QUANT[other]))
    weight = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.qdata[0, 0] += 1  # one stored integer changed: another model, another key
    assert model_fingerprint(model) != fingerprint


def test_a_run_on_an_int8_base_with_a_cached_reference(tmp_path: Path, hh_path: Path, monkeypatch) -> None:
    """``model.quantization: {bits: 8}`` with ``reference.mode: cached`` trains, and a second run reuses the cache."""
    from alignkit.cli import main

    llama = {**TINY_LLAMA, "vocab_size": 50257}
    args = [f"model.from_config={json.dumps(llama)}", "model.tokenizer=gpt2", "model.quantization={bits: 8}",
            "adapter={kind: lora, r: 4, alpha: 8}", "reference.mode=cached", f"data.source.path={hh_path}",
            f"data.test_source.path={hh_path}", "data.max_examples=8", "data.max_length=48",
            "data.max_prompt_length=32", "sft.enabled=false", "train.batch_size=4", "train.grad_accum=1",
            "train.max_steps=1", "train.warmup_steps=0", "train.eval_every=null", "train.save_every=null",
            "train.device=cpu", "eval=null"]
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    for run in ("a", "b"):
        assert main(["run", "recipes/dpo_gpt2_hh.yaml", f"output_dir={tmp_path / run}", *args]) == 0
    # One file of reference log-probs: the second run found the first one's under the same key.
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
