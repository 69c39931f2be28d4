"""Merge/unmerge, adapter-only checkpoints, merged export, export with adapters, and the PEFT format."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from helpers import KINDS, VOCAB, fixed_batch, one_torch_thread, randomize_adapter  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file

from alignkit.peft import (
    adapters_disabled,
    apply_adapter,
    export_merged,
    export_peft_lora,
    export_with_adapters,
    has_adapters,
    load_adapter,
    load_exported,
    merge_adapter,
    save_adapter,
    unmerge_adapter,
)

MAKERS = {"gpt2": make_tiny_gpt2, "llama": make_tiny_llama}


def _adapted(arch: str, kind: str, seed: int = 0):
    model = apply_adapter(MAKERS[arch](vocab_size=VOCAB), KINDS[kind])
    randomize_adapter(model, seed)
    return model


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(fixed_batch()).logits


@pytest.mark.parametrize("arch", list(MAKERS))
def test_lora_merge_unmerge_round_trip(arch: str) -> None:
    model = _adapted(arch, "lora")
    unmerged = _logits(model)
    with adapters_disabled(model):
        base = _logits(model)
    assert not torch.allclose(unmerged, base, atol=1e-3)
    merge_adapter(model)
    assert torch.allclose(_logits(model), unmerged, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge_adapter"), adapters_disabled(model):
        pass
    unmerge_adapter(model)
    assert torch.allclose(_logits(model), unmerged, atol=1e-5)
    with adapters_disabled(model):
        assert torch.allclose(_logits(model), base, atol=1e-5)


def test_bottleneck_cannot_be_merged() -> None:
    model = _adapted("gpt2", "bottleneck-parallel")
    with pytest.raises(ValueError, match="export_with_adapters"):
        merge_adapter(model)
    with pytest.raises(ValueError, match="export_with_adapters"):
        export_merged(model, None, "unused")


@pytest.mark.parametrize(
    ("arch", "kind"), [("gpt2", k) for k in KINDS] + [("llama", "bottleneck-parallel-from-mlp"), ("llama", "lora")]
)
def test_save_load_round_trip(tmp_path, arch: str, kind: str) -> None:
    model = _adapted(arch, kind)
    expected = _logits(model)
    folder = save_adapter(model, tmp_path / "adapter")
    save_adapter(model, folder)  # overwriting an existing checkpoint is fine
    assert sorted(p.name for p in folder.iterdir()) == ["alignkit_adapter.json", "alignkit_adapter.safetensors"]
    saved = load_file(str(folder / "alignkit_adapter.safetensors"))
    assert all(".base_layer." not in name for name in saved)  # adapter weights only
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)

    fresh = load_adapter(MAKERS[arch](vocab_size=VOCAB), folder)
    assert torch.equal(_logits(fresh), expected)
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="alignkit_adapter.json"):
        load_adapter(make_tiny_gpt2(vocab_size=VOCAB), tmp_path)
    folder = save_adapter(_adapted("gpt2", "lora"), tmp_path / "gpt2-lora")
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        load_adapter(make_tiny_llama(vocab_size=VOCAB), folder)  # GPT-2 target names on a Llama
    bottleneck = save_adapter(_adapted("gpt2", "bottleneck-sequential"), tmp_path / "gpt2-bottleneck")
    with pytest.raises(ValueError, match="saved for layers"):
        load_adapter(make_tiny_llama(vocab_size=VOCAB), bottleneck)


@pytest.mark.parametrize("arch", list(MAKERS))
def test_export_merged_loads_with_transformers(tmp_path, arch: str, gpt2_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = _adapted(arch, "lora")
    expected = _logits(model)
    folder = export_merged(model, gpt2_tokenizer, tmp_path / "merged")
    # The model itself is untouched: adapters still in place, unmerged, same outputs bit for bit.
    assert has_adapters(model) and torch.equal(_logits(model), expected)
    assert (folder / "tokenizer_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not has_adapters(reloaded)
    assert torch.allclose(_logits(reloaded), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["bottleneck-replace", "bottleneck-sequential"])
def test_export_with_adapters_reloads_with_alignkit(tmp_path, kind: str) -> None:
    from transformers import AutoModelForCausalLM

    model = _adapted("gpt2", kind)
    expected = _logits(model)
    with adapters_disabled(model):
        base = _logits(model)
    folder = export_with_adapters(model, None, tmp_path / "exported")
    assert torch.equal(_logits(load_exported(folder).eval()), expected)
    # Plain transformers sees the base model (documented), never a half-adapted one.
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(folder).eval()), base)


@pytest.mark.parametrize("arch", list(MAKERS))
def test_peft_format_loads_with_peft(tmp_path, arch: str) -> None:
    peft = pytest.importorskip("peft")
    model = _adapted(arch, "lora")
    expected = _logits(model)
    folder = export_peft_lora(model, tmp_path / "peft", base_model_name=f"tiny-{arch}")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (arch == "gpt2")  # GPT-2's Conv1D stores weights (in, out)
    keys = load_file(str(folder / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)

    loaded = peft.PeftModel.from_pretrained(MAKERS[arch](vocab_size=VOCAB), folder).eval()
    assert torch.allclose(_logits(loaded), expected, atol=1e-5)


def test_lora_on_a_tied_lm_head_merges_and_exports_exactly(tmp_path, gpt2_tokenizer) -> None:
    """GPT-2's lm_head shares the input embedding: merging LoRA into it must leave the embedding alone."""
    from transformers import AutoModelForCausalLM

    model = apply_adapter(make_tiny_gpt2(vocab_size=VOCAB), {"kind": "lora", "r": 4, "alpha": 8,
                                                               "target_modules": ["c_attn", "lm_head"]})
    randomize_adapter(model, 0)
    assert model.lm_head.base_layer.weight is model.transformer.wte.weight
    embedding = model.transformer.wte.weight.detach().clone()
    expected = _logits(model)

    merge_adapter(model)
    assert torch.equal(model.transformer.wte.weight, embedding)
    assert torch.allclose(_logits(model), expected, atol=1e-5)
    unmerge_adapter(model)
    assert model.lm_head.base_layer.weight is model.transformer.wte.weight  # tied again, exactly
    assert torch.equal(_logits(model), expected)

    folder = export_merged(model, gpt2_tokenizer, tmp_path / "merged")
    assert torch.equal(_logits(model), expected) and model.config.tie_word_embeddings
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert torch.equal(reloaded.transformer.wte.weight, embedding)
    assert torch.allclose(_logits(reloaded), expected, atol=1e-5)
