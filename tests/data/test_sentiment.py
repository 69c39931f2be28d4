"""Controlled-sentiment prompts and preference pairs made from a reward."""

from __future__ import annotations

import copy
import time

import pytest

import alignkit.data.sentiment as sentiment
import alignkit.models.generate as generate
from alignkit.data.sentiment import (
    SENTIMENT_PROMPTS,
    SENTIMENT_SUBJECTS,
    SENTIMENT_TEMPLATES,
    SMALL_GAP,
    build_reward_pairs,
    is_eval_prompt,
    make_sentiment_pairs,
    model_fingerprint,
    prepare_sentiment_data,
    sentiment_prompts,
)
from alignkit.data.types import PreferenceExample
from alignkit.models.generate import generate_completions
from alignkit.models.rewards import REWARDS, register_reward, vader_sentiment

PROMPTS = ["Write one line about trains.", "Describe a chair.", "Tell me about tea."]
PAIR_SETTINGS = dict(samples_per_prompt=3, max_new_tokens=4, temperature=1.0, batch_size=5, seed=5)


@pytest.fixture
def length_reward():
    """A deterministic reward registered for the test: characters in the text."""

    @register_reward("test_text_length")
    def text_length(texts: list[str]) -> list[float]:
        return [float(len(t)) for t in texts]

    yield "test_text_length"
    REWARDS.remove("test_text_length")


@pytest.fixture
def generation_calls(monkeypatch):
    """Counts calls of the real generation function from the pairs builder."""
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return generate_completions(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_completions", counting)  # read at each call
    return calls


def test_prompts_are_many_varied_unique_and_neutral():
    assert len(SENTIMENT_TEMPLATES) >= 30 and len(SENTIMENT_SUBJECTS) >= 30
    assert len(SENTIMENT_PROMPTS) == len(set(SENTIMENT_PROMPTS)) >= 900
    assert SENTIMENT_PROMPTS[0] == SENTIMENT_TEMPLATES[0].format(x=SENTIMENT_SUBJECTS[0])
    # No sentiment is built into a prompt: VADER scores every one of them exactly 0.
    assert set(vader_sentiment(list(SENTIMENT_PROMPTS))) == {0.0}


def test_eval_split_is_fixed_disjoint_and_about_a_fifth():
    train, held_out = sentiment_prompts(), sentiment_prompts(split="eval")
    assert not set(train) & set(held_out)
    assert len(train) + len(held_out) == len(SENTIMENT_PROMPTS)
    assert 0.15 < len(held_out) / len(SENTIMENT_PROMPTS) < 0.25
    assert all(is_eval_prompt(p) for p in held_out) and not any(is_eval_prompt(p) for p in train)
    # Seeded order; a prefix of the same shuffle for smaller n.
    assert sentiment_prompts(50, seed=1) == sentiment_prompts(seed=1)[:50]
    assert sentiment_prompts(50, seed=1) != sentiment_prompts(50, seed=2)
    with pytest.raises(ValueError, match="n must be in 1..") as info:
        sentiment_prompts(len(held_out) + 1, split="eval")
    assert str(len(held_out)) in str(info.value)
    with pytest.raises(ValueError, match="split"):
        sentiment_prompts(split="test")  # type: ignore[arg-type]


def test_pairs_are_best_versus_worst(tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path):
    result = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    samples = generate_completions(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, max_new_tokens=4, temperature=1.0, samples_per_prompt=3,
        batch_size=5, seed=5,
    )
    texts = [[c.text for c in samples[i * 3 : (i + 1) * 3]] for i in range(3)]
    kept = [i for i in range(3) if len({len(t) for t in texts[i]}) > 1]
    assert [p.prompt for p in result.pairs] == [PROMPTS[i] for i in kept]
    for pair, i in zip(result.pairs, kept, strict=True):
        assert isinstance(pair, PreferenceExample)
        assert len(pair.chosen) == max(len(t) for t in texts[i])
        assert len(pair.rejected) == min(len(t) for t in texts[i])
        assert pair.chosen in texts[i] and pair.rejected in texts[i]
    assert result.drops.seen == 3 and result.drops.dropped == 3 - len(kept)
    assert result.rewards == [[float(len(t)) for t in group] for group in texts]
    assert result.mean_gap == pytest.approx(
        sum(len(p.chosen) - len(p.rejected) for p in result.pairs) / len(result.pairs)
    )
    assert result.reward_name == "test_text_length" and not result.from_cache


def test_cache_reuse_skips_generation(tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path, generation_calls):
    first = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    assert len(generation_calls) == 1 and first.cache_path is not None and first.cache_path.exists()
    second = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    assert len(generation_calls) == 1, "the second call must not generate"
    assert second.from_cache and second.pairs == first.pairs
    # The cache holds samples, not pairs: a stricter gap needs no generation either.
    stricter = make_sentiment_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path,
        min_reward_gap=1e9, **PAIR_SETTINGS,
    )
    assert stricter == [] and len(generation_calls) == 1
    # Another seed, prompt list or model is another key.
    build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path,
        **{**PAIR_SETTINGS, "seed": 6},
    )
    build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS[:2], reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    assert len(generation_calls) == 3
    # Written atomically: no temporary files are left behind.
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".jsonl"] * 3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_corrupt_or_mismatched_cache_is_regenerated(
    tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path, generation_calls
):
    first = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    first.cache_path.write_text("{not json\n")
    again = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    assert len(generation_calls) == 2 and not again.from_cache and again.pairs == first.pairs


@pytest.mark.parametrize("damage", [
    lambda text: text.replace('"completions": ["', '"completions": [NaN, "', 1),  # a non-finite value
    lambda text: text.replace('"completions": ["', '"completions": [Infinity, "', 1),
    lambda text: text.replace('"completions": ["', '"completions": [' + "1" * 5000 + ', "', 1),  # digit limit
    lambda text: text + "[" * 5000 + "]" * 5000 + "\n",  # nesting too deep for the parser
    lambda text: text + "[1, 2]\n",  # a row that is not an object
    lambda text: text.replace('"completions": ["', '"completions": [7, "', 1),  # a completion that is no text
    lambda text: "\n".join(text.split("\n")[1:]),  # no line of metadata
], ids=["nan", "infinity", "huge-int", "deep", "list-row", "not-text", "no-meta"])
def test_a_damaged_cache_is_a_miss_sampled_again_and_rewritten(
    tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path, generation_calls, damage, caplog
):
    """A cache file alignkit wrote and something damaged is read strictly: a miss (a warning naming the file),
    never a traceback and never a value that is not a text; the file is written again, whole."""
    first = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    good = first.cache_path.read_text()
    first.cache_path.write_text(damage(good))
    again = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS
    )
    assert len(generation_calls) == 2 and not again.from_cache and again.pairs == first.pairs
    assert str(first.cache_path) in caplog.text and "sampled again" in caplog.text
    assert first.cache_path.read_text() == good


def test_use_cache_false_always_generates(tiny_gpt2, gpt2_tokenizer, length_reward, generation_calls):
    for _ in range(2):
        result = build_reward_pairs(
            tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], reward=length_reward, use_cache=False, **PAIR_SETTINGS
        )
        assert result.cache_path is None
    assert len(generation_calls) == 2


def test_ties_are_dropped_and_counted(tiny_gpt2, gpt2_tokenizer, tmp_path):
    result = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=lambda texts: [0.5] * len(texts), cache_dir=tmp_path,
        **PAIR_SETTINGS,
    )
    assert result.pairs == []
    assert result.drops.reasons[SMALL_GAP] == 3 and result.drops.kept == 0
    assert "0 pairs from 3 prompts" in result.summary()


def test_model_fingerprint_tracks_weights(tiny_gpt2):
    start = time.perf_counter()
    fp = model_fingerprint(tiny_gpt2)
    assert time.perf_counter() - start < 20  # hashing ~1.6M weights; a loaded machine may take 10x
    assert fp == model_fingerprint(copy.deepcopy(tiny_gpt2))
    changed = copy.deepcopy(tiny_gpt2)
    changed.transformer.h[0].mlp.c_fc.bias.data[0] += 1e-3
    assert model_fingerprint(changed) != fp


def test_chat_template_makes_conversational_pairs(tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path):
    tok = copy.deepcopy(gpt2_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    pairs = make_sentiment_pairs(tiny_gpt2, tok, PROMPTS, reward=length_reward, cache_dir=tmp_path, **PAIR_SETTINGS)
    assert pairs
    for pair in pairs:
        assert pair.conversational
        assert pair.prompt[0]["role"] == "user" and pair.prompt[0]["content"] in PROMPTS
        assert pair.chosen[0]["role"] == "assistant" and pair.rejected[0]["role"] == "assistant"


def test_bad_arguments(tiny_gpt2, gpt2_tokenizer):
    with pytest.raises(ValueError, match="completions_per_prompt must be >= 2"):
        build_reward_pairs(tiny_gpt2, gpt2_tokenizer, PROMPTS, samples_per_prompt=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_reward_pairs(tiny_gpt2, gpt2_tokenizer, PROMPTS, temperature=0)
    with pytest.raises(ValueError, match="no prompts"):
        build_reward_pairs(tiny_gpt2, gpt2_tokenizer, [])


@pytest.mark.slow
def test_real_smollm2_sentiment_pairs(tmp_path, smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = sentiment_prompts(8, seed=0)
    result = build_reward_pairs(
        model, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=24, batch_size=16, seed=0,
        cache_dir=tmp_path,
    )
    print(result.summary())
    assert result.drops.seen == 8 and len(result.pairs) >= 4
    assert result.mean_gap > 0.1
    for pair in result.pairs:
        assert pair.conversational
        assert vader_sentiment([pair.chosen[0]["content"]]) > vader_sentiment([pair.rejected[0]["content"]])
    again = build_reward_pairs(
        model, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=24, batch_size=16, seed=0,
        cache_dir=tmp_path,
    )
    assert again.from_cache and again.pairs == result.pairs


def test_all_tied_rewards_still_pair_two_different_samples(tiny_gpt2, gpt2_tokenizer, tmp_path):
    result = build_reward_pairs(
        tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], reward=lambda texts: [0.0] * len(texts), cache_dir=tmp_path,
        min_reward_gap=float("-inf"), **PAIR_SETTINGS,
    )
    samples = generate_completions(
        tiny_gpt2, gpt2_tokenizer, PROMPTS[:1], max_new_tokens=4, samples_per_prompt=3, batch_size=5, seed=5
    )
    assert result.pairs[0].chosen == samples[0].text and result.pairs[0].rejected == samples[2].text


def test_prepare_sentiment_data_from_a_recipe_section(tiny_gpt2, gpt2_tokenizer):
    from alignkit.data.config import DataConfig

    source = {"kind": "sentiment", "num_prompts": 5, "num_eval_prompts": 3, "completions_per_prompt": 4,
              "max_new_tokens": 8, "batch_size": 8}
    cfg = DataConfig(source=source, max_length=64, max_prompt_length=32, max_examples=4, seed=1)
    data = prepare_sentiment_data(cfg, gpt2_tokenizer, tiny_gpt2, seed=0)
    train_prompts = [ex.prompt for ex in data.train_examples]
    test_prompts = [ex.prompt for ex in data.test_examples]
    assert set(train_prompts) <= set(sentiment_prompts(4, seed=1))  # max_examples caps num_prompts
    assert test_prompts == sentiment_prompts(3, seed=1, split="eval")  # every held-out prompt is kept
    assert len(data.test) == 3 and 1 <= len(data.train) <= 4
    assert {p.index for p in data.test} == {len(data.train_examples) + i for i in range(3)}
    assert data.load_report.seen == 7


def test_bf16_generation_copy_leaves_the_model_alone(tiny_gpt2, gpt2_tokenizer, length_reward, tmp_path):
    import torch

    fp32 = build_reward_pairs(tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path,
                              **PAIR_SETTINGS)
    bf16 = build_reward_pairs(tiny_gpt2, gpt2_tokenizer, PROMPTS, reward=length_reward, cache_dir=tmp_path,
                              generation_dtype=torch.bfloat16, **PAIR_SETTINGS)
    assert next(tiny_gpt2.parameters()).dtype == torch.float32
    assert bf16.cache_path != fp32.cache_path and not bf16.from_cache


def test_pair_cache_survives_unicode_line_separators(tmp_path):
    """Completions may contain U+2028/U+0085, which str.splitlines() treats as line breaks."""
    from alignkit.data.sample_cache import read_cache, write_jsonl_atomic

    path = tmp_path / "cache.jsonl"
    texts = [["a\u2028b", "c\x85d"], ["e", "f\u2029g"]]
    rows = [{"meta": {}}] + [{"prompt": p, "completions": t} for p, t in zip(["p1", "p2"], texts, strict=True)]
    write_jsonl_atomic(path, rows)
    assert read_cache(path, ["p1", "p2"], k=2) == texts


def test_generation_dtype_auto_is_the_decoding_phase_s_choice(tiny_gpt2, monkeypatch):
    import torch

    from alignkit.models.hardware import HARDWARE_ENV

    def on(stated):
        monkeypatch.setenv(HARDWARE_ENV, stated)
        return sentiment._generation_dtype("auto", tiny_gpt2)

    assert on("native-bf16") == torch.bfloat16
    assert on("no-bf16") is None  # emulated bf16 is slower than fp32: sample as loaded
    assert sentiment._generation_dtype("bfloat16", tiny_gpt2) == torch.bfloat16  # asked for, whatever the CPU
