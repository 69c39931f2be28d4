"""Name patterns, Conv1D layout, and the LoRA / bottleneck modules on hand-worked numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from helpers import VOCAB, one_torch_thread  # noqa: F401 (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from alignkit.peft.bottleneck import Bottleneck, describe_mlp
from alignkit.peft.lora import LoRALayer
from alignkit.peft.modules import linear_shape, linear_weight_out_in, matches_any


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["c_attn"], "transformer.h.0.attn.c_attn", True),
        (["attn"], "transformer.h.0.attn.c_attn", False),  # a plain name must be the last component(s)
        (["attn.c_attn"], "transformer.h.0.attn.c_attn", True),
        (["*.h.1.*.c_attn"], "transformer.h.0.attn.c_attn", False),
        (["*.h.1.*.c_attn"], "transformer.h.1.attn.c_attn", True),
        ([r".*\.(q|v)_proj"], "model.layers.3.self_attn.v_proj", True),
        ([r".*\.(q|v)_proj"], "model.layers.3.self_attn.k_proj", False),
        (["h.[0-1"], "h.[0-1", True),  # not a valid regex: still matched literally
    ],
)
def test_matches_any(patterns: list[str], path: str, expected: bool) -> None:
    assert matches_any(patterns, path) is expected


def test_conv1d_layout() -> None:
    conv = Conv1D(nf=3, nx=2)  # 2 in, 3 out, weight stored (2, 3)
    assert linear_shape(conv) == (2, 3)
    assert linear_weight_out_in(conv).shape == (3, 2)
    x = torch.randn(4, 2)
    assert torch.allclose(conv(x), x @ linear_weight_out_in(conv).T + conv.bias)


def _set_lora(layer: LoRALayer) -> None:
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 2.0]]))  # (r=1, in=2)
        layer.lora_B.weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))  # (out=3, r=1)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_lora_forward_and_merge_hand_worked(kind: str) -> None:
    base = nn.Linear(2, 3) if kind == "linear" else Conv1D(3, 2)
    with torch.no_grad():
        linear_weight_out_in(base).zero_()
        base.bias.zero_()
    layer = LoRALayer(base, r=1, alpha=2.0)  # scaling 2
    _set_lora(layer)
    x = torch.tensor([[1.0, 1.0]])
    # B A x = [3, 0, -3]; times scaling 2.
    expected = torch.tensor([[6.0, 0.0, -6.0]])
    assert torch.equal(layer(x), expected)
    layer.merge()
    assert torch.equal(layer(x), expected)
    # The merged weight is stored in the base layer's own layout: (in, out) for Conv1D.
    stored = base.weight if kind == "linear" else base.weight.T
    assert torch.equal(stored, torch.tensor([[2.0, 4.0], [0.0, 0.0], [-2.0, -4.0]]))
    layer.unmerge()
    assert torch.equal(base.weight, torch.zeros_like(base.weight))
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_lora_starts_as_identity_and_rejects_other_layers() -> None:
    base = nn.Linear(4, 5)
    layer = LoRALayer(base, r=2, alpha=4.0)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), base(x))
    with pytest.raises(TypeError, match="Linear or Conv1D"):
        LoRALayer(nn.Embedding(3, 4), r=1, alpha=1.0)


def test_bottleneck_hand_worked() -> None:
    adapter = Bottleneck(hidden_size=2, size=1, activation=nn.ReLU(), scaling=0.5)
    with torch.no_grad():
        adapter.down.weight.copy_(torch.tensor([[1.0, -1.0]]))
        adapter.down.bias.fill_(0.0)
        adapter.up.weight.copy_(torch.tensor([[2.0], [4.0]]))
        adapter.up.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    # relu([2, -2]) = [2, 0]; up -> [[5, 8], [1, 0]]; times 0.5.
    assert torch.equal(adapter(x), torch.tensor([[2.5, 4.0], [0.5, 0.0]]))


def test_from_mlp_keeps_the_most_important_neurons() -> None:
    mlp = make_tiny_gpt2(vocab_size=VOCAB).transformer.h[0].mlp
    weights = describe_mlp(mlp)
    assert weights is not None and weights.intermediate_size == 128
    with torch.no_grad():  # make neurons 5 and 77 dominant
        mlp.c_fc.weight[:, [5, 77]] *= 10.0
    adapter = Bottleneck(32, 2, activation=weights.act, dtype=weights.w_in.dtype)
    adapter.init_from_mlp(weights, copy_output=True)
    assert torch.equal(adapter.down.weight, mlp.c_fc.weight.T[[5, 77]])
    assert torch.equal(adapter.down.bias, mlp.c_fc.bias[[5, 77]])
    assert torch.equal(adapter.up.weight, mlp.c_proj.weight.T[:, [5, 77]])
    assert torch.equal(adapter.up.bias, mlp.c_proj.bias)


def test_from_mlp_full_width_is_the_mlp() -> None:
    mlp = make_tiny_llama(vocab_size=VOCAB).model.layers[0].mlp
    weights = describe_mlp(mlp)
    assert weights is not None and weights.w_gate is not None
    adapter = Bottleneck(32, 64 + 3, activation=weights.act, gated=True)  # wider than the MLP
    adapter.init_from_mlp(weights, copy_output=True)
    x = torch.randn(2, 5, 32)
    assert torch.allclose(adapter(x), mlp(x), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 6),
    n_out=st.integers(1, 6),
    r=st.integers(1, 4),
    alpha=st.floats(0.5, 32.0),
    conv=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_is_the_same_function(n_in: int, n_out: int, r: int, alpha: float, conv: bool, seed: int) -> None:
    """For any shape, layout and scaling: merged forward = unmerged forward, and unmerge restores W."""
    torch.manual_seed(seed)
    base = Conv1D(n_out, n_in) if conv else nn.Linear(n_in, n_out)
    original = base.weight.detach().clone()
    layer = LoRALayer(base, r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, n_in)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        assert torch.allclose(layer(x), unmerged, atol=1e-4, rtol=1e-4)
        layer.unmerge()
    assert torch.allclose(base.weight, original, atol=1e-5)


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return super().forward(x) * scale


def test_wrappers_pass_extra_arguments_to_the_base_layer_adapter_on_or_off() -> None:
    base = _ScaledLinear(4, 5)
    layer = LoRALayer(base, r=2, alpha=4.0)  # B starts at zero: the adapter adds nothing yet
    x = torch.randn(3, 4)
    assert torch.equal(layer(x, scale=2.0), base(x, scale=2.0))
    layer.adapter_enabled = False
    assert torch.equal(layer(x, scale=2.0), base(x, scale=2.0))
