"""Chunked sequence log-probs must equal the full-logits computation, in values and in gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st
from preference_batches import collate, make_pairs

from alignkit.models.logps import (
    _LOGIT_TRANSFORMS,
    LogpsOptions,
    concatenated_forward,
    naive_sequence_logps,
    sequence_logps,
    supports_chunked_logps,
)


def oracle_logps(model, input_ids, attention_mask, labels):
    """Straight from the model's own (N, T, V) logits: position t-1 scores token t where labels count."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logprobs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(-1)
    n_idx, t_idx = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    picked = logprobs[n_idx, t_idx, labels[n_idx, t_idx + 1]]  # (M,)
    sums = torch.stack([picked[n_idx == n].sum() for n in range(input_ids.shape[0])])
    counts = torch.bincount(n_idx, minlength=input_ids.shape[0]).float()
    return sums, counts


def padded_batch(vocab_size: int = 50257, seed: int = 0):
    """6 rows of different lengths, right padded, prompts masked; one row with a single scored token."""
    pairs = make_pairs(3, vocab_size=vocab_size, seed=seed)
    pairs[0]["chosen_ids"] = pairs[0]["chosen_ids"][:1]
    batch = collate(pairs, pad_id=min(vocab_size - 1, 50256))
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return batch


def grads_of(model, fn, batch, weights):
    model.zero_grad(set_to_none=True)
    logps, counts = fn(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    (logps * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), counts, grads


def assert_grads_close(grads, ref_grads, atol):
    assert set(grads) == set(ref_grads) and grads
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("make", [make_tiny_gpt2, make_tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_chunked_matches_naive_values_and_gradients(make, chunk_size):
    # float64 so that only the algorithm, not float32 summation order, can make the two differ.
    model = make(vocab_size=1000).double()  # the full vocabulary is covered by the float32 test below
    assert supports_chunked_logps(model)
    batch = padded_batch(vocab_size=1000)
    weights = torch.linspace(0.5, 2.0, batch["input_ids"].shape[0], dtype=torch.float64)  # catches row mix-ups

    ref_logps, ref_counts, ref_grads = grads_of(model, oracle_logps, batch, weights)
    logps, counts, grads = grads_of(
        model, lambda *a: sequence_logps(*a, logps=LogpsOptions(chunk_size=chunk_size)), batch, weights
    )

    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(counts, ref_counts)
    assert_grads_close(grads, ref_grads, atol=1e-5)


@pytest.mark.parametrize("make", [make_tiny_gpt2, make_tiny_llama], ids=["gpt2", "llama"])
def test_chunked_matches_naive_in_float32(make):
    model = make()
    batch = padded_batch()
    weights = torch.linspace(0.5, 2.0, batch["input_ids"].shape[0])
    ref_logps, _, ref_grads = grads_of(model, oracle_logps, batch, weights)
    logps, _, grads = grads_of(model, lambda *a: sequence_logps(*a, logps=LogpsOptions(chunk_size=5)), batch, weights)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-6)
    # fp32 sums in another order: gradient entries up to ~15 agree to ~1e-5 relative to that scale.
    scale = max(g.abs().max().item() for g in ref_grads.values())
    assert_grads_close(grads, ref_grads, atol=1e-5 * max(1.0, scale))


def test_counts_and_sign_hand_checked(tiny_gpt2):
    batch = padded_batch()
    logps, counts = sequence_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"])
    # collate puts the response tokens (and only them) in labels; the first row was cut to 1 token.
    expected = torch.tensor([float((row != -100).sum()) for row in batch["labels"]])
    assert counts[0] == 1.0
    torch.testing.assert_close(counts, expected)
    assert (logps < 0).all()


def test_row_without_scored_tokens_gives_zero(tiny_gpt2):
    batch = padded_batch()
    batch["labels"][1] = -100
    logps, counts = sequence_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=LogpsOptions(2))
    assert logps[1] == 0.0 and counts[1] == 0.0
    ref, _ = oracle_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(logps, ref, atol=1e-5, rtol=1e-5)


def test_no_grad_path_matches(tiny_llama):
    batch = padded_batch()
    with torch.no_grad():
        chunked, _ = sequence_logps(tiny_llama, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=LogpsOptions(4))
        ref, _ = oracle_logps(tiny_llama, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)


def test_with_gradient_checkpointing_in_train_mode():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).double().train()
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x; 5.0 has the old one
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = padded_batch(vocab_size=1000)
    weights = torch.ones(batch["input_ids"].shape[0], dtype=torch.float64)
    ref_logps, _, ref_grads = grads_of(model, oracle_logps, batch, weights)
    logps, _, grads = grads_of(model, lambda *a: sequence_logps(*a, logps=LogpsOptions(chunk_size=5)), batch, weights)
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)
    assert_grads_close(grads, ref_grads, atol=1e-5)


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        model_type, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        pad_token_id=127, bos_token_id=1, eos_token_id=2, **extra,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


_VARIANTS = {
    "gemma2": {"final_logit_softcapping": 0.5},  # small cap: the tanh clearly bends the logits
    "gemma3_text": {"final_logit_softcapping": 0.5},
    "granite": {"logits_scaling": 4.0},
    "cohere": {"logit_scale": 0.25},
    "cohere2": {"logit_scale": 0.25},
}
# One architecture per kind of logit transform runs by default; the sweep over the rest is slow-marked.
_DEFAULT = {"gemma2", "granite", "cohere"}
_CASES = [
    pytest.param(t, _VARIANTS.get(t, {}), id=t, marks=() if t in _DEFAULT else pytest.mark.slow)
    for t in sorted(_LOGIT_TRANSFORMS)
    if t not in ("gpt2", "llama")  # covered above with the full vocabulary
]
_CASES.append(pytest.param("gemma2", {"final_logit_softcapping": None}, id="gemma2-nocap"))


@pytest.mark.parametrize("model_type, extra", _CASES)
def test_logit_transforms_match_the_models_forward(model_type, extra):
    model = _tiny(model_type, **extra).double()
    assert supports_chunked_logps(model)
    batch = padded_batch(vocab_size=128)
    weights = torch.linspace(1.0, 2.0, batch["input_ids"].shape[0], dtype=torch.float64)
    ref_logps, _, ref_grads = grads_of(model, oracle_logps, batch, weights)
    logps, _, grads = grads_of(model, lambda *a: sequence_logps(*a, logps=LogpsOptions(chunk_size=3)), batch, weights)
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)
    assert_grads_close(grads, ref_grads, atol=1e-5)


def test_unknown_architecture_falls_back_to_full_logits():
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=128, hidden_size=32, n_layer=1, n_head=4)).eval()
    assert not supports_chunked_logps(model)
    batch = padded_batch(vocab_size=128)
    logps, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=LogpsOptions(2))
    ref, ref_counts = oracle_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(logps, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(counts, ref_counts)


def test_naive_matches_oracle(tiny_gpt2):
    batch = padded_batch()
    with torch.no_grad():
        naive, _ = naive_sequence_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ref, _ = oracle_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(naive, ref, atol=1e-5, rtol=1e-5)


def test_shape_mismatch_is_a_clear_error(tiny_gpt2):
    batch = padded_batch()
    with pytest.raises(ValueError, match="same \\(N, T\\) shape"):
        sequence_logps(tiny_gpt2, batch["input_ids"], batch["attention_mask"], batch["labels"][:, :-1])


_SMALL_GPT2 = make_tiny_gpt2(vocab_size=64, seed=3)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_pairs=st.integers(1, 3),
    chunk_size=st.integers(1, 40),
)
def test_property_chunked_equals_naive_for_random_masks(seed, n_pairs, chunk_size):
    batch = collate(make_pairs(n_pairs, vocab_size=64, seed=seed), pad_id=63)
    with torch.no_grad():
        chunked, counts = sequence_logps(
            _SMALL_GPT2, batch["input_ids"], batch["attention_mask"], batch["labels"], logps=LogpsOptions(chunk_size)
        )
        ref, ref_counts = oracle_logps(_SMALL_GPT2, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(counts, ref_counts)


def test_concatenated_forward_splits_chosen_and_rejected(tiny_llama):
    pairs = make_pairs(3, seed=5)
    batch = collate(pairs)
    with torch.no_grad():
        out = concatenated_forward(tiny_llama, batch, logps=LogpsOptions(chunk_size=4))
        # Each half on its own (different padding width) must give the same numbers.
        only_chosen = collate([{**p, "rejected_ids": p["chosen_ids"]} for p in pairs])
        only_rejected = collate([{**p, "chosen_ids": p["rejected_ids"]} for p in pairs])
        chosen_ref, chosen_n = sequence_logps(tiny_llama, only_chosen["input_ids"],
                                              only_chosen["attention_mask"], only_chosen["labels"])
        rejected_ref, rejected_n = sequence_logps(tiny_llama, only_rejected["input_ids"],
                                                  only_rejected["attention_mask"], only_rejected["labels"])
    assert set(out) == {"chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"}
    assert all(v.shape == (3,) for v in out.values())
    torch.testing.assert_close(out["chosen_logps"], chosen_ref[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["rejected_logps"], rejected_ref[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["chosen_lengths"], torch.tensor([float(len(p["chosen_ids"])) for p in pairs]))
    torch.testing.assert_close(out["rejected_lengths"], torch.tensor([float(len(p["rejected_ids"])) for p in pairs]))
    assert not torch.equal(out["chosen_logps"], out["rejected_logps"])


def test_concatenated_forward_rejects_odd_batch(tiny_gpt2):
    batch = collate(make_pairs(2))
    odd = {k: v[:3] for k, v in batch.items() if k != "index"}
    with pytest.raises(ValueError, match="even number of rows"):
        concatenated_forward(tiny_gpt2, odd)
