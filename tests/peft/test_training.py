"""Each adapter kind on tiny GPT-2 and tiny Llama: identity at step 0, learns, base frozen, exact reference."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from helpers import KINDS, VOCAB, fixed_batch, one_torch_thread, train_steps  # noqa: F401 (autouse fixture)

from alignkit.peft import (
    adapters_disabled,
    apply_adapter,
    count_parameters,
    has_adapters,
    parameter_table,
)

MAKERS = {"gpt2": make_tiny_gpt2, "llama": make_tiny_llama}


@pytest.mark.parametrize("arch", list(MAKERS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_trains_with_base_frozen_and_exact_reference(arch: str, kind: str) -> None:
    model = MAKERS[arch](vocab_size=VOCAB)
    ids = fixed_batch()
    with torch.no_grad():
        base_logits = model(ids).logits
    snapshot = {name: p.detach().clone() for name, p in model.named_parameters()}

    apply_adapter(model, KINDS[kind])
    assert has_adapters(model)

    # Only adapter parameters train.
    for name, param in model.named_parameters():
        is_adapter = ".base_layer." not in name and name not in snapshot
        assert param.requires_grad == is_adapter, name
    trainable, total = count_parameters(model)
    assert 0 < trainable < total - sum(p.numel() for p in snapshot.values()) + 1

    # Step 0: unchanged exactly, except "replace", which starts as a pruned MLP.
    with torch.no_grad():
        start_logits = model(ids).logits
    if kind == "bottleneck-replace":
        assert not torch.equal(start_logits, base_logits)
    else:
        assert torch.equal(start_logits, base_logits)

    losses = train_steps(model, ids)
    assert losses[-1] < losses[0] - 0.05, losses

    # The base weights did not move.
    for name, param in model.named_parameters():
        original = name.replace(".base_layer", "")
        if not param.requires_grad:
            assert torch.equal(param, snapshot[original]), name

    # Adapters off: bit for bit the base model; back on afterwards.
    with torch.no_grad():
        with adapters_disabled(model):
            assert torch.equal(model(ids).logits, base_logits)
        assert not torch.equal(model(ids).logits, base_logits)


@pytest.mark.parametrize("arch", list(MAKERS))
def test_replace_from_mlp_starts_close_to_the_mlp(arch: str) -> None:
    """A wider replacement is closer to the block's MLP (it is a pruned MLP); full width is the MLP."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    errors = []
    for size in (4, 32, 1000):
        model = MAKERS[arch](vocab_size=VOCAB)
        mlp_path = "transformer.h.0.mlp" if arch == "gpt2" else "model.layers.0.mlp"
        cfg = {"kind": "bottleneck", "placement": "replace", "bottleneck_size": size}
        apply_adapter(model, cfg)
        wrapper = model.get_submodule(mlp_path)
        with torch.no_grad():
            errors.append((wrapper(x) - wrapper.base_layer(x)).norm().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_parameter_table_rows() -> None:
    tiny_gpt2 = make_tiny_gpt2(vocab_size=VOCAB)
    total_before = sum(p.numel() for p in tiny_gpt2.parameters())
    apply_adapter(tiny_gpt2, {"kind": "lora", "r": 2})
    rows = {row.name: row for row in parameter_table(tiny_gpt2)}
    # c_attn: in 32, out 96, two layers: 2 * (2*32 + 96*2) = 512.
    assert rows["lora adapter (2 layers)"].trainable == rows["lora adapter (2 layers)"].total == 512
    assert rows["base model"].trainable == 0 and rows["base model"].total == total_before
    assert rows["total"].trainable == 512 and rows["total"].total == total_before + 512
    assert count_parameters(tiny_gpt2) == (512, total_before + 512)


def test_no_adapter_leaves_the_model_trainable() -> None:
    tiny_gpt2 = make_tiny_gpt2(vocab_size=VOCAB)
    assert apply_adapter(tiny_gpt2, {"kind": "none"}) is tiny_gpt2
    assert not has_adapters(tiny_gpt2)
    assert all(p.requires_grad for p in tiny_gpt2.parameters())
    with pytest.raises(ValueError, match="no adapters"), adapters_disabled(tiny_gpt2):
        pass


def test_no_target_matched_names_patterns_and_modules() -> None:
    tiny_llama = make_tiny_llama(vocab_size=VOCAB)
    with pytest.raises(ValueError, match=r"\['c_attn'\] matched no nn.Linear.*self_attn.q_proj"):
        apply_adapter(tiny_llama, {"kind": "lora", "target_modules": ["c_attn"]})
    with pytest.raises(ValueError, match="matched no MLP module"):
        apply_adapter(tiny_llama, {"kind": "bottleneck", "target": ["*.ffn"]})
    with pytest.raises(ValueError, match="not a GPT-2 MLP"):
        apply_adapter(tiny_llama, {"kind": "bottleneck", "target": ["*.self_attn"]})


def test_applying_twice_is_refused() -> None:
    tiny_gpt2 = make_tiny_gpt2(vocab_size=VOCAB)
    apply_adapter(tiny_gpt2, {"kind": "lora"})
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapter(tiny_gpt2, {"kind": "bottleneck"})


def test_default_lora_targets() -> None:
    from alignkit.peft import adapter_targets

    tiny_gpt2, tiny_llama = make_tiny_gpt2(vocab_size=VOCAB), make_tiny_llama(vocab_size=VOCAB)
    apply_adapter(tiny_gpt2, {"kind": "lora"})
    apply_adapter(tiny_llama, {"kind": "lora"})
    assert adapter_targets(tiny_gpt2) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert [t.rsplit(".", 1)[1] for t in adapter_targets(tiny_llama)] == ["q_proj", "v_proj"] * 2
