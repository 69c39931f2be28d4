"""The decoding loop: token picks by hand, greedy equal to transformers' ``generate``, samples that do not depend
on batching, sorting or rows finishing early, and the preallocated key/value cache."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from transformers import MistralConfig, MistralForCausalLM

from alignkit.models.decode import (
    DecodeStats,
    PreallocatedLayer,
    decode,
    new_cache,
    pick_tokens,
    row_uniforms,
)

PAD = 0
# Prompts of lengths 5, 1, 9, 3, 6, 2, 7 (ids of a 64-token vocabulary).
PROMPTS = [[(7 * i + 3 * j) % 60 + 4 for j in range(n)] for i, n in enumerate([5, 1, 9, 3, 6, 2, 7])]


def _tiny_mistral(vocab_size: int = 64) -> MistralForCausalLM:
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=4)
    return MistralForCausalLM(cfg).eval()


MODELS = {
    "gpt2": lambda: make_tiny_gpt2(vocab_size=64).eval(),
    "llama": lambda: make_tiny_llama(vocab_size=64, seed=1).eval(),
    "mistral-sliding-window": _tiny_mistral,
}


def _decode(model, prompts=PROMPTS, *, batch_size=3, temperature=1.0, top_p=1.0, eos=(1, 2, 3), seed=0, new=12,
            stats=None):
    uniforms = torch.stack([row_uniforms(seed, r, new) for r in range(len(prompts))])
    return decode(model, prompts, uniforms, max_new_tokens=new, temperature=temperature, top_p=top_p,
                  eos_ids=list(eos), pad_id=PAD, batch_size=batch_size, stats=stats)


def test_tokens_are_picked_by_inverse_cdf_by_hand():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]] * 4)
    u = torch.tensor([0.1, 0.6, 0.85, 0.4999], dtype=torch.float64)
    assert pick_tokens(logits, u, 1.0, 1.0).tolist() == [0, 1, 2, 0]
    # top-p 0.6: the nucleus is {0, 1} (mass before token 2 is 0.8), renormalised to 0.625 / 0.375.
    u = torch.tensor([0.6, 0.63, 0.99, 0.0], dtype=torch.float64)
    assert pick_tokens(logits, u, 1.0, 0.6).tolist() == [0, 1, 1, 0]
    # Temperature 2: p ∝ sqrt(p) = 0.7071, 0.5477, 0.4472 (sum 1.7020) -> cdf 0.4155, 0.7373, 1.
    u = torch.tensor([0.41, 0.42, 0.73, 0.74], dtype=torch.float64)
    assert pick_tokens(logits, u, 2.0, 1.0).tolist() == [0, 1, 1, 2]
    assert pick_tokens(logits, u, 0.0, 1.0).tolist() == [0, 0, 0, 0]  # greedy ignores the draws
    # A zero-probability token is never picked, even by a draw on its boundary.
    masked = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert pick_tokens(masked, torch.tensor([0.5], dtype=torch.float64), 1.0, 1.0).tolist() == [2]


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_equals_transformers_generate_with_rows_ending_early(name):
    model = MODELS[name]()
    free = _decode(model, temperature=0.0, eos=(), new=10)
    eos = [free[0][0][2]]  # row 0's third greedy token ends it there; other rows end wherever they emit it
    stats = DecodeStats()
    mine = _decode(model, temperature=0.0, eos=eos, new=10, stats=stats)
    ended = 0
    for prompt, (tokens, finished) in zip(PROMPTS, mine, strict=True):
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                 eos_token_id=eos, pad_token_id=PAD)[0, len(prompt):].tolist()
        cut = next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))
        assert tokens == ref[:cut]
        assert finished == (tokens[-1] in eos)
        ended += finished
    assert stats.new_tokens == sum(len(t) for t, _ in mine)
    assert stats.prompt_tokens == sum(len(p) for p in PROMPTS)
    assert 0 < ended < len(PROMPTS)
    # Rows sorted by prompt length, in batches of 3: a prefill, then one forward per token of the longest row.
    order = sorted(range(len(PROMPTS)), key=lambda r: len(PROMPTS[r]))
    assert stats.forwards == sum(max(len(mine[r][0]) for r in order[b:b + 3]) for b in (0, 3, 6))


@pytest.mark.parametrize("name", list(MODELS))
def test_samples_do_not_depend_on_batching_order_or_rows_dropped(name):
    model = MODELS[name]()
    # EOS = 4 of 64 tokens: rows end at different steps and are dropped from their batch.
    one_by_one = _decode(model, batch_size=1)
    assert 0 < sum(finished for _, finished in one_by_one) < len(PROMPTS)
    for batch_size in (2, 3, 7):
        assert _decode(model, batch_size=batch_size) == one_by_one
    # The rows' order in the call does not matter either: row r keeps its own stream.
    reversed_rows = decode(model, PROMPTS[::-1], torch.stack([row_uniforms(0, r, 12) for r in range(7)])
                           .flip(0), max_new_tokens=12, temperature=1.0, top_p=1.0, eos_ids=[1, 2, 3],
                           pad_id=PAD, batch_size=4)
    assert reversed_rows[::-1] == one_by_one
    assert _decode(model, seed=1) != one_by_one


def test_the_cache_is_preallocated_and_selects_rows():
    layer = PreallocatedLayer(capacity=4)
    keys = torch.arange(3 * 2 * 2 * 1, dtype=torch.float32).reshape(3, 2, 2, 1)
    k, v = layer.update(keys, keys + 100)
    assert torch.equal(k, keys) and layer.get_seq_length() == 2
    step = torch.full((3, 2, 1, 1), -1.0)
    k, v = layer.update(step, step)
    assert k.shape == (3, 2, 3, 1) and torch.equal(k[:, :, :2], keys) and torch.equal(v[:, :, 2], step[:, :, 0])
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys[:, :, :2], keys[[2, 0]]) and torch.equal(layer.values[:, :, :2], keys[[2, 0]] + 100)
    layer.update(step[:2], step[:2])
    with pytest.raises(RuntimeError, match="cannot hold 5"):
        layer.update(step[:2], step[:2])


def test_only_full_attention_layers_are_preallocated():
    assert all(isinstance(layer, PreallocatedLayer) for layer in new_cache(make_tiny_llama(vocab_size=64), 8).layers)
    assert not any(isinstance(layer, PreallocatedLayer) for layer in new_cache(_tiny_mistral(), 8).layers)


def test_bad_uniforms_are_named():
    with pytest.raises(ValueError, match=r"uniforms of shape \(2, 3\), expected \(7, 12\)"):
        decode(make_tiny_gpt2(vocab_size=64), PROMPTS, torch.rand(2, 3), max_new_tokens=12, temperature=1.0,
               top_p=1.0, eos_ids=[1], pad_id=PAD, batch_size=2)
