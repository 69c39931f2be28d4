"""Batched, seeded generation: determinism, left padding, EOS handling, chat templates."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_llama

from alignkit.models.generate import Completion, format_prompt, generate_completions

PROMPTS = [
    "Hello there, how are you doing on this fine and sunny day?",
    "Hi",
    "A prompt of medium length",
]


def _ids(completions: list[Completion]) -> list[list[int]]:
    return [c.completion_ids for c in completions]


def test_sampling_is_reproducible_under_a_seed(tiny_gpt2, gpt2_tokenizer):
    kwargs = dict(max_new_tokens=6, temperature=1.0, samples_per_prompt=2, batch_size=4)
    a = generate_completions(tiny_gpt2, gpt2_tokenizer, PROMPTS, seed=7, **kwargs)
    b = generate_completions(tiny_gpt2, gpt2_tokenizer, PROMPTS, seed=7, **kwargs)
    c = generate_completions(tiny_gpt2, gpt2_tokenizer, PROMPTS, seed=8, **kwargs)
    assert _ids(a) == _ids(b)
    assert [x.text for x in a] == [x.text for x in b]
    assert _ids(a) != _ids(c)
    # Prompt-major order: K completions of prompt 0, then prompt 1, ...
    assert [x.prompt_index for x in a] == [0, 0, 1, 1, 2, 2]
    # Two samples of one prompt differ (a random tiny model has a near-uniform distribution).
    assert a[0].completion_ids != a[1].completion_ids


def test_callers_rng_stream_is_untouched(tiny_gpt2, gpt2_tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_completions(tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], max_new_tokens=3, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("make", ["gpt2", "llama"])
def test_left_padded_batch_equals_one_by_one_greedy(make, tiny_gpt2, gpt2_tokenizer):
    model = tiny_gpt2 if make == "gpt2" else make_tiny_llama(seed=1)
    side = gpt2_tokenizer.padding_side
    batched = generate_completions(model, gpt2_tokenizer, PROMPTS, max_new_tokens=8, temperature=0, batch_size=3)
    single = generate_completions(model, gpt2_tokenizer, PROMPTS, max_new_tokens=8, temperature=0, batch_size=1)
    assert _ids(batched) == _ids(single)
    assert all(len(c.completion_ids) == 8 for c in batched)
    assert gpt2_tokenizer.padding_side == side
    # Prompt ids are the unpadded tokenization.
    assert batched[1].prompt_ids == gpt2_tokenizer("Hi")["input_ids"]


def test_eos_is_kept_in_ids_and_left_out_of_text(tiny_gpt2, gpt2_tokenizer):
    kwargs = dict(max_new_tokens=6, temperature=1.0, seed=3)
    free = generate_completions(tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], **kwargs)[0]
    assert not free.finished
    # Make the third sampled token the model's EOS: the same draws must stop right after it.
    stop = free.completion_ids[2]
    assert stop not in free.completion_ids[:2]
    model = copy.deepcopy(tiny_gpt2)
    model.generation_config.eos_token_id = stop
    done = generate_completions(model, gpt2_tokenizer, PROMPTS[:1], **kwargs)[0]
    assert done.finished
    assert done.completion_ids == free.completion_ids[:3]
    assert done.num_tokens == 3
    assert done.text == gpt2_tokenizer.decode(free.completion_ids[:2])


def test_chat_template_is_applied_with_generation_prompt(tiny_gpt2, gpt2_tokenizer):
    tok = copy.deepcopy(gpt2_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompt(tok, "Hi", use_chat_template=True) == tok("<user>Hi\n<assistant>")["input_ids"]
    out = generate_completions(tiny_gpt2, tok, ["Hi"], max_new_tokens=2, temperature=0)
    assert out[0].prompt_ids == tok("<user>Hi\n<assistant>")["input_ids"]
    raw = generate_completions(tiny_gpt2, tok, ["Hi"], max_new_tokens=2, temperature=0, use_chat_template=False)
    assert raw[0].prompt_ids == tok("Hi")["input_ids"]


def test_bad_arguments_are_named(tiny_gpt2, gpt2_tokenizer):
    with pytest.raises(ValueError, match="top_p"):
        generate_completions(tiny_gpt2, gpt2_tokenizer, ["x"], max_new_tokens=2, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_completions(tiny_gpt2, gpt2_tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="chat_template"):
        generate_completions(tiny_gpt2, gpt2_tokenizer, ["x"], max_new_tokens=2, use_chat_template=True)


def test_progress_callback_sees_every_batch(tiny_gpt2, gpt2_tokenizer):
    seen: list[tuple[int, int]] = []
    generate_completions(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, max_new_tokens=2, samples_per_prompt=2, batch_size=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(4, 6), (6, 6)]


def test_training_flag_is_restored(tiny_gpt2, gpt2_tokenizer):
    tiny_gpt2.train()
    generate_completions(tiny_gpt2, gpt2_tokenizer, ["x"], max_new_tokens=2)
    assert tiny_gpt2.training


def test_a_model_that_is_not_a_causal_lm_is_refused(gpt2_tokenizer):
    with pytest.raises(TypeError, match="not a transformers causal LM"):
        generate_completions(torch.nn.Linear(2, 2), gpt2_tokenizer, PROMPTS[:1], max_new_tokens=2)


@pytest.mark.parametrize("make", ["gpt2", "llama"])
def test_continuous_batching_gives_the_batch_loops_completions(make, tiny_gpt2, gpt2_tokenizer):
    model = (tiny_gpt2 if make == "gpt2" else make_tiny_llama(seed=1)).float()
    kwargs = dict(max_new_tokens=6, temperature=1.0, samples_per_prompt=3, batch_size=2, seed=5)
    continuous = generate_completions(model, gpt2_tokenizer, PROMPTS, continuous_batching=True, **kwargs)
    batch_loop = generate_completions(model, gpt2_tokenizer, PROMPTS, continuous_batching=False, **kwargs)
    assert [(c.prompt_index, c.completion_ids, c.finished, c.text) for c in continuous] == \
        [(c.prompt_index, c.completion_ids, c.finished, c.text) for c in batch_loop]
    for a, b in zip(continuous, batch_loop, strict=True):
        assert a.sampler_logps == pytest.approx(b.sampler_logps, abs=1e-6)
