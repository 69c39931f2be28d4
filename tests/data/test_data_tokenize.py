"""Tokenization: boundaries, EOS, truncation (properties), chat templates."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data import (
    DataError,
    PreferenceExample,
    collate_preference,
    tokenize_pairs,
    tokenize_sft,
)
from alignkit.data.tokenize import IDENTICAL_AFTER_TRUNCATION, truncate_pair
from alignkit.data.types import CHAT_TEMPLATE_PREFIX, PROMPT_TOO_LONG

EOS = 50256
# A small template in the usual shape: each turn closes with EOS; the generation cue opens the answer.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_tokenizer):
    tok = copy.deepcopy(gpt2_tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_plain_text_ids_and_eos(gpt2_tokenizer) -> None:
    tok = gpt2_tokenizer
    ex = PreferenceExample("\n\nHuman: Hi\n\nAssistant:", " Hello there.", " Go away.", weight=0.5)
    pairs, report = tokenize_pairs([ex], tok, max_length=64, max_prompt_length=32)
    (p,) = pairs
    assert report.kept == 1 and p.index == 0 and p.weight == 0.5
    assert p.prompt_ids == tok(ex.prompt)["input_ids"]
    assert p.chosen_ids == tok(" Hello there.")["input_ids"] + [EOS]
    assert p.rejected_ids == tok(" Go away.")["input_ids"] + [EOS]
    # With the leading-space convention, separate tokenization equals joint tokenization.
    assert p.prompt_ids + p.chosen_ids[:-1] == tok(ex.prompt + ex.chosen)["input_ids"]

    sft, _ = tokenize_sft([ex], tok, max_length=64, max_prompt_length=32)
    assert sft[0].chosen_ids == p.chosen_ids and sft[0].rejected_ids == []


def test_drops_are_counted_not_raised(gpt2_tokenizer) -> None:
    long_shared = " word" * 40
    examples = [
        PreferenceExample("Q", long_shared + " A", long_shared + " B"),   # identical once cut to 16
        PreferenceExample("Q", " ", " x"),                                 # empty response
        PreferenceExample("Q", " fine", " also fine"),
    ]
    pairs, report = tokenize_pairs(examples, gpt2_tokenizer, max_length=16, max_prompt_length=8)
    assert [p.index for p in pairs] == [2]  # index = position in the input list, gaps where dropped
    assert report.reasons == {IDENTICAL_AFTER_TRUNCATION: 1, "empty response": 1}
    # max_prompt_length >= max_length leaves no room: counted, never a crash
    long_prompt = PreferenceExample(" Q" * 10, " a", " b")
    pairs, report = tokenize_pairs([long_prompt], gpt2_tokenizer, max_length=4, max_prompt_length=4)
    assert pairs == [] and report.reasons == {PROMPT_TOO_LONG: 1}


@settings(max_examples=200, deadline=None)
@given(
    prompt_len=st.integers(0, 60),
    chosen_len=st.integers(0, 60),
    rejected_len=st.integers(0, 60),
    max_length=st.integers(2, 80),
    max_prompt_length=st.integers(1, 79),
    bos=st.sampled_from([None, 1]),
    mode=st.sampled_from(["always", "when_needed"]),
)
def test_truncation_properties(prompt_len, chosen_len, rejected_len, max_length, max_prompt_length, bos, mode) -> None:
    prompt = list(range(1000, 1000 + prompt_len))
    chosen = list(range(2000, 2000 + chosen_len))
    rejected = list(range(3000, 3000 + rejected_len))
    out = truncate_pair(prompt, [chosen, rejected], max_length, max_prompt_length, EOS, bos, mode)
    head = [bos] if bos is not None else []
    longest = max(chosen_len, rejected_len) + 1  # EOS appended
    if mode == "when_needed" and len(head) + prompt_len + longest <= max_length:
        assert out == (head + prompt, [chosen + [EOS], rejected + [EOS]], False, False)  # fits: nothing cut
        return
    keep = min(prompt_len, max(max_prompt_length - len(head), 0))
    if len(head) + keep >= max_length:
        assert out is None
        return
    assert out is not None
    p, (c, r) = out.prompt_ids, out.responses
    assert p == head + prompt[prompt_len - keep:]  # the prompt keeps its end, BOS stays in front
    assert len(p) <= max(max_prompt_length, len(head))
    assert out.prompt_cut == (keep < prompt_len)
    assert out.response_cut == (len(c) < chosen_len + 1 or len(r) < rejected_len + 1)
    for full, got in ((chosen + [EOS], c), (rejected + [EOS], r)):
        assert got == full[: len(got)]  # responses keep their start
        assert 1 <= len(got) and len(p) + len(got) <= max_length
        assert len(got) == min(len(full), max_length - len(p))  # cut only as much as needed


@settings(max_examples=25, deadline=None)
@given(
    n_prompt=st.integers(1, 40),
    n_chosen=st.integers(1, 40),
    n_rejected=st.integers(1, 40),
    max_length=st.integers(12, 60),
    max_prompt_length=st.integers(1, 11),
)
def test_tokenize_and_collate_properties(
    gpt2_tokenizer, n_prompt, n_chosen, n_rejected, max_length, max_prompt_length
) -> None:
    tok = gpt2_tokenizer
    prompt = "".join(f" p{i}" for i in range(n_prompt))
    ex = PreferenceExample(prompt, "".join(f" c{i}" for i in range(n_chosen)), "".join(f" r{i}" for i in range(n_rejected)))
    pairs, _ = tokenize_pairs([ex], tok, max_length=max_length, max_prompt_length=max_prompt_length)
    (pair,) = pairs
    full_prompt = tok(prompt)["input_ids"]
    assert pair.prompt_ids == full_prompt[-max_prompt_length:]
    assert pair.chosen_length <= max_length and pair.rejected_length <= max_length
    batch = collate_preference(pairs, pad_token_id=EOS)
    for row, response in ((0, pair.chosen_ids), (1, pair.rejected_ids)):
        labels = batch["labels"][row]
        scored = (labels != -100).nonzero().flatten().tolist()
        start = len(pair.prompt_ids)
        assert scored == list(range(start, start + len(response)))  # exactly the response tokens
        assert labels[scored].tolist() == response


def test_chat_template_rendering(chat_tokenizer) -> None:
    tok = chat_tokenizer
    user = {"role": "user", "content": "Name a colour."}
    ex = PreferenceExample([user], [{"role": "assistant", "content": "Blue."}],
                           [{"role": "assistant", "content": "No."}])
    pairs, report = tokenize_pairs([ex], tok, max_length=64, max_prompt_length=32)
    (p,) = pairs
    assert tok.decode(p.prompt_ids) == "<|user|>\nName a colour.<|endoftext|>\n<|assistant|>\n"
    # the template's EOS closes the turn: no second EOS is appended, the trailing newline is dropped
    assert tok.decode(p.chosen_ids) == "Blue.<|endoftext|>" and p.chosen_ids.count(EOS) == 1
    assert tok.decode(p.rejected_ids) == "No.<|endoftext|>"

    # An HH text prompt is split into real turns when the template is asked for.
    hh = PreferenceExample("\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Colour?\n\nAssistant:", " Blue.", " No.")
    (q,), _ = tokenize_pairs([hh], tok, max_length=64, max_prompt_length=48, chat_template=True)
    assert tok.decode(q.prompt_ids) == (
        "<|user|>\nHi<|endoftext|>\n<|assistant|>\nHey<|endoftext|>\n<|user|>\nColour?<|endoftext|>\n<|assistant|>\n"
    )
    assert tok.decode(q.chosen_ids) == "Blue.<|endoftext|>"

    # chat_template=False renders conversations as HH-style plain text instead.
    (r,), _ = tokenize_pairs([ex], tok, max_length=64, max_prompt_length=32, chat_template=False)
    assert tok.decode(r.prompt_ids) == "\n\nHuman: Name a colour.\n\nAssistant:"
    assert tok.decode(r.chosen_ids) == " Blue.<|endoftext|>"


def test_chat_template_errors_and_prefix_mismatch(gpt2_tokenizer, chat_tokenizer) -> None:
    ex = PreferenceExample([{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "a"}],
                           [{"role": "assistant", "content": "b"}])
    with pytest.raises(DataError, match="no chat template"):
        tokenize_pairs([ex], gpt2_tokenizer, chat_template=True)
    # Without a template and with chat_template unset, conversations fall back to plain text.
    (p,), _ = tokenize_pairs([ex], gpt2_tokenizer)
    assert gpt2_tokenizer.decode(p.prompt_ids) == "\n\nHuman: Hi\n\nAssistant:"

    odd = copy.deepcopy(chat_tokenizer)
    odd.chat_template = TEMPLATE.replace("<|assistant|>\n{% endif %}", "<|reply|>{% endif %}")
    pairs, report = tokenize_pairs([ex], odd)
    assert pairs == [] and report.reasons == {CHAT_TEMPLATE_PREFIX: 1}


def _tokenize_hh_within_limits(path, tokenizer) -> tuple[list, object]:
    """Tokenize every example of an HH file at 128/64 tokens and check each pair keeps to the limits."""
    from alignkit.data import HHRLHFSource, load_examples

    examples, _ = load_examples(HHRLHFSource(path=str(path)))
    pairs, report = tokenize_pairs(examples, tokenizer, max_length=128, max_prompt_length=64)
    assert report.seen == len(examples) and len(pairs) + report.dropped == len(examples)
    colon = tokenizer(":")["input_ids"][0]
    for p in pairs:
        assert len(p.prompt_ids) <= 64 and p.chosen_length <= 128 and p.rejected_length <= 128
        assert p.prompt_ids[-1] == colon  # left truncation kept the "Assistant:" cue
    return pairs, report


def test_hh_tokenizes_within_limits(hh_path, gpt2_tokenizer) -> None:
    pairs, report = _tokenize_hh_within_limits(hh_path, gpt2_tokenizer)
    assert report.seen == 67 and report.reasons == {IDENTICAL_AFTER_TRUNCATION: 1}
    # The fixture's long dialogues reach both limits: prompts cut to 64, responses cut (EOS lost) to fit 128.
    assert sum(len(p.prompt_ids) == 64 for p in pairs) >= 3
    cut = [p for p in pairs if p.chosen_length == 128 and p.chosen_ids[-1] != EOS]
    assert len(cut) >= 3


def test_real_hh_tokenizes_within_limits(real_hh_path, gpt2_tokenizer) -> None:
    pairs, report = _tokenize_hh_within_limits(real_hh_path, gpt2_tokenizer)
    assert report.seen == 2303 and len(pairs) > 2200
