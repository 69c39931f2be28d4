"""An adapter run's model/ folder: the adapter and a reference to its base (path and hash), not the base
again; reloaded (eval, serve) it gives the trained model's logits, and a moved or changed base is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demo_recipe import DEMO_RECIPE, tiny_demo_overrides, tiny_llama_folder

from alignkit.commands.run import run_recipe_file
from alignkit.models.config import ModelConfig
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer
from alignkit.models.load import ModelLoadError, load_causal_lm
from alignkit.peft import apply_adapter
from alignkit.workflow.model_io import MANIFEST_FILE, load_run_model, save_model, weights_sha256

IDS = torch.tensor([[464, 3290, 318, 257, 922, 1110, 13, 50256]])


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _trained_lora(base: Path, kind: str = "lora") -> torch.nn.Module:
    """The base with an adapter whose output side is no longer zero (as after training)."""
    policy = load_causal_lm(ModelConfig(name_or_path=str(base)), "cpu")
    cfg = {"kind": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]} if kind == "lora" else \
        {"kind": "bottleneck", "bottleneck_size": 8}
    apply_adapter(policy, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.normal_(0, 0.2)
    return policy.eval()


@pytest.mark.parametrize("kind", ["lora", "bottleneck"])
def test_the_folder_refers_to_the_base_and_reloads_to_the_same_logits(tmp_path, kind):
    base = tiny_llama_folder(tmp_path / "base")
    policy = _trained_lora(base, kind)
    tokenizer = offline_gpt2_tokenizer()
    assert save_model(policy, tokenizer, tmp_path / "ref" / "model") == "adapter_only"
    assert save_model(policy, tokenizer, tmp_path / "copy" / "model", copy_base=True) == "base_and_adapter"
    manifest = json.loads((tmp_path / "ref" / "model" / MANIFEST_FILE).read_text())
    assert manifest["base_model"]["name_or_path"] == str(base.resolve())
    assert manifest["base_model"]["weights_sha256"] == weights_sha256(base) and manifest["quantization"] is None
    assert not list((tmp_path / "ref" / "model").glob("model*.safetensors"))
    base_bytes = (base / "model.safetensors").stat().st_size
    assert _size(tmp_path / "ref" / "model") < base_bytes < _size(tmp_path / "copy" / "model")
    with torch.no_grad():
        expected = policy(IDS).logits
        for folder in ("ref", "copy"):
            reloaded, _ = load_run_model(tmp_path / folder)
            assert torch.equal(reloaded(IDS).logits, expected), folder


def test_a_missing_or_changed_base_is_refused_with_what_to_do(tmp_path):
    base = tiny_llama_folder(tmp_path / "base")
    save_model(_trained_lora(base), offline_gpt2_tokenizer(), tmp_path / "run" / "model")
    weights = base / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + bytes(4))  # the last bytes of a weight changed
    with pytest.raises(ModelLoadError, match="have changed since.*adapter.save_base"):
        load_run_model(tmp_path / "run")
    weights.rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelLoadError, match=f"{base.resolve()}, which holds no model weights now"):
        load_run_model(tmp_path / "run")
    (tmp_path / "elsewhere.safetensors").rename(weights)
    weights.write_bytes(original)
    load_run_model(tmp_path / "run")


def test_a_tiny_adapter_run_saves_no_copy_of_its_base_unless_asked(tmp_path):
    base = tiny_llama_folder(tmp_path / "base")
    run_recipe_file(DEMO_RECIPE, tiny_demo_overrides(base, tmp_path / "run"))
    run_recipe_file(DEMO_RECIPE, [*tiny_demo_overrides(base, tmp_path / "copy"), "adapter.save_base=true"])
    model, copied = tmp_path / "run" / "model", tmp_path / "copy" / "model"
    assert json.loads((model / MANIFEST_FILE).read_text())["contents"] == "adapter_only"
    assert json.loads((copied / MANIFEST_FILE).read_text())["contents"] == "base_and_adapter"
    base_bytes = (base / "model.safetensors").stat().st_size
    assert _size(tmp_path / "run") < base_bytes < _size(copied)
    with torch.no_grad():  # both folders reload to the same trained model (same seed, fp32)
        a, _ = load_run_model(tmp_path / "run")
        b, _ = load_run_model(tmp_path / "copy")
        assert torch.equal(a(IDS).logits, b(IDS).logits)
