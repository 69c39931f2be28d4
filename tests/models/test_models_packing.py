"""Padding-free (packed) log-prob forwards equal the padded ones, for every architecture allowed to pack."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

from alignkit.models.logps import LogpsOptions, sequence_logps
from alignkit.models.packing import (
    PACKABLE_MODEL_TYPES,
    _first_fit_decreasing,
    is_right_padded,
    pack_rows,
    supports_packing,
)

VOCAB = 97


def _tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, head_dim=8)
    if model_type == "gpt2":
        common = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0)
    if model_type == "gpt_neox":
        common.pop("num_key_value_heads"), common.pop("head_dim")
    if model_type == "mistral":
        common["sliding_window"] = None  # a sliding window keeps the padded path (supports_packing)
    if model_type == "phi3":
        common["pad_token_id"] = 0
    cfg = AutoConfig.for_model(model_type, **common)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval().double()


def _batch(lengths: list[int], prompt: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    width = -(-max(lengths) // 8) * 8
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, min(prompt, n):n] = ids[i, min(prompt, n):n]
    return ids, mask, labels


@pytest.mark.parametrize("model_type", sorted(PACKABLE_MODEL_TYPES))
def test_packed_logps_and_gradients_equal_padded(model_type):
    model = _tiny(model_type)
    assert supports_packing(model)
    ids, mask, labels = _batch([30, 7, 12, 25, 5, 18])  # packs 6 rows of width 32 into 4
    assert pack_rows(ids, mask, labels).num_rows < ids.shape[0]

    def run(padding_free: bool):
        model.zero_grad()
        logps, counts = sequence_logps(model, ids, mask, labels, logps=LogpsOptions(16, padding_free))
        (logps * torch.arange(1, 7, dtype=logps.dtype)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logps.detach(), counts, grads

    packed, padded = run(True), run(False)
    # float64 models; some norms compute in float32 inside (Gemma), hence the relative tolerances.
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-7, atol=1e-9)
    assert torch.equal(packed[1], padded[1])
    assert packed[2].keys() == padded[2].keys()
    for name in padded[2]:
        torch.testing.assert_close(packed[2][name], padded[2][name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("model_type, extra", [("gemma2", {}), ("mistral", {"sliding_window": 16})])
def test_unknown_architecture_or_sliding_window_keeps_the_padded_batch(model_type, extra):
    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, **extra)
    assert not supports_packing(AutoModelForCausalLM.from_config(cfg))


def test_pack_rows_layout_by_hand():
    # lengths 5, 2, 3 in width 8 (prompt of 1 token): 5 + 3 share a row, 2 gets its own.
    ids, mask, labels = _batch([5, 2, 3], prompt=1)
    packed = pack_rows(ids, mask, labels)
    assert packed.num_rows == 2
    assert packed.sequence.tolist() == [[0, 0, 0, 0, 0, 2, 2, 2], [1, 1, -1, -1, -1, -1, -1, -1]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert packed.input_ids[0, 5:].tolist() == ids[2, :3].tolist()
    # Each sequence's first token is never a target; the tail is never a target.
    assert packed.labels[0, 5].item() == -100 and (packed.labels[1, 2:] == -100).all()
    assert packed.labels[0, 1:5].tolist() == ids[0, 1:5].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(40, 64))
def test_first_fit_decreasing_places_every_sequence_once_within_capacity(lengths, capacity):
    bins = _first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # First fit never leaves two bins that could be merged into one.
    fills = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(fills) < 2 or fills[0] + fills[1] > capacity


def test_a_left_padded_batch_is_not_packed():
    model = _tiny("llama")
    ids, mask, labels = _batch([30, 7, 12, 25, 5, 18])
    assert is_right_padded(mask)
    # Move each row's real tokens to the right: the same sequences, left padded.
    shift = (mask.shape[1] - mask.sum(-1)).tolist()
    l_ids, l_mask, l_labels = (torch.stack([torch.roll(t[i], shift[i]) for i in range(len(shift))])
                               for t in (ids, mask, labels))
    assert not is_right_padded(l_mask)
    # Packing would read the padding as tokens; the padded path is taken and is unchanged by the flag.
    a, _ = sequence_logps(model, l_ids, l_mask, l_labels, logps=LogpsOptions(padding_free=True))
    b, _ = sequence_logps(model, l_ids, l_mask, l_labels, logps=LogpsOptions(padding_free=False))
    assert torch.equal(a, b)
