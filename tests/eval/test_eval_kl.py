"""Sample-based KL(policy || reference): zero against itself, positive against another model, hand cases."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from alignkit.models.generate import Completion, generate_completions
from alignkit.models.kl import as_reference, completion_logps, sequence_kl

PROMPTS = ["The weather today is", "My favourite", "Tell me a story about a small robot who"]


def _perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


@pytest.fixture
def samples(tiny_gpt2, gpt2_tokenizer) -> list[Completion]:
    return generate_completions(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, max_new_tokens=6, samples_per_prompt=4, batch_size=6, seed=0
    )


def test_kl_of_a_model_against_itself_is_exactly_zero(tiny_gpt2, samples, gpt2_tokenizer):
    kl = sequence_kl(tiny_gpt2, tiny_gpt2, samples, batch_size=5, pad_token_id=gpt2_tokenizer.pad_token_id)
    assert kl.shape == (len(samples),)
    assert torch.equal(kl, torch.zeros(len(samples)))


def test_kl_against_a_perturbed_copy_is_positive(tiny_gpt2, samples, gpt2_tokenizer):
    kl = sequence_kl(tiny_gpt2, _perturbed(tiny_gpt2), samples, batch_size=5, pad_token_id=0)
    assert kl.mean() > 0
    # Padding and batch composition do not change any sample's value.
    one_by_one = sequence_kl(tiny_gpt2, _perturbed(tiny_gpt2), samples, batch_size=1, pad_token_id=0)
    torch.testing.assert_close(kl, one_by_one, atol=1e-4, rtol=1e-4)


def test_one_token_kl_by_hand(tiny_gpt2, gpt2_tokenizer):
    reference = _perturbed(tiny_gpt2, scale=0.2)
    prompt = gpt2_tokenizer("Once upon a time")["input_ids"]
    token = 1234
    completion = Completion(0, "x", prompt, [token], finished=False)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        p = tiny_gpt2(ids).logits[0, -1].log_softmax(-1)[token]
        q = reference(ids).logits[0, -1].log_softmax(-1)[token]
    kl = sequence_kl(tiny_gpt2, reference, [completion], batch_size=1, pad_token_id=0)
    torch.testing.assert_close(kl, torch.tensor([float(p - q)]), atol=1e-5, rtol=0)
    logps = completion_logps(tiny_gpt2, [completion], batch_size=1, pad_token_id=0)
    torch.testing.assert_close(logps, torch.tensor([float(p)]), atol=1e-5, rtol=0)


def test_two_token_kl_sums_both_steps(tiny_gpt2, gpt2_tokenizer):
    reference = _perturbed(tiny_gpt2, scale=0.2)
    prompt = gpt2_tokenizer("A")["input_ids"]
    completion = Completion(0, "", prompt, [11, 22])
    with torch.no_grad():
        ids = torch.tensor([prompt + [11, 22]])
        lp = tiny_gpt2(ids).logits[0].log_softmax(-1)  # (T, V)
        lq = reference(ids).logits[0].log_softmax(-1)
    n = len(prompt)
    expected = (lp[n - 1, 11] + lp[n, 22]) - (lq[n - 1, 11] + lq[n, 22])
    kl = sequence_kl(tiny_gpt2, reference, [completion], batch_size=1, pad_token_id=0)
    torch.testing.assert_close(kl, expected.reshape(1), atol=1e-5, rtol=0)


def test_reference_as_context_callable_is_entered_once_after_the_policy(tiny_gpt2, samples):
    reference = _perturbed(tiny_gpt2)
    events: list[str] = []

    @contextmanager
    def ref_ctx():
        events.append("enter")
        yield reference
        events.append("exit")

    direct = sequence_kl(tiny_gpt2, reference, samples, batch_size=4, pad_token_id=0)
    via_ctx = sequence_kl(tiny_gpt2, ref_ctx, samples, batch_size=4, pad_token_id=0)
    assert events == ["enter", "exit"]
    assert torch.equal(direct, via_ctx)


def test_as_reference_accepts_modules_callables_and_model_context(tiny_gpt2):
    with as_reference(tiny_gpt2)() as m:
        assert m is tiny_gpt2

    class HasContext:
        @contextmanager
        def model_context(self):
            yield tiny_gpt2

    with as_reference(HasContext())() as m:
        assert m is tiny_gpt2
    with pytest.raises(TypeError, match="reference must be"):
        as_reference(42)
