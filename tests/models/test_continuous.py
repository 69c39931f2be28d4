"""Continuous batching: every row's completion and log-probs equal decoding its prompt alone (fp32), for GPT-2
and Llama, whatever the batch size, the refill point or when rows end; planted mistakes in the joins fail that."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import MistralConfig, MistralForCausalLM

from alignkit.models import continuous
from alignkit.models.continuous import decode_continuous
from alignkit.models.decode import DecodeStats, decode, row_uniforms

PAD = 0
EOS = (1, 2, 3, 5)  # 4 of 64 tokens: rows end at different steps
# Prompts of lengths 5, 1, 9, 3, 6, 2, 7, 4, 8, 2, 11 (ids of a 64-token vocabulary), left-padded in a batch.
PROMPTS = [[(7 * i + 3 * j) % 60 + 4 for j in range(n)] for i, n in enumerate([5, 1, 9, 3, 6, 2, 7, 4, 8, 2, 11])]


@cache
def _model(name: str) -> torch.nn.Module:
    model = make_tiny_gpt2(vocab_size=64) if name == "gpt2" else make_tiny_llama(vocab_size=64, seed=1)
    return model.float().eval()  # exact comparisons pin fp32


def _uniforms(rows: int, new: int, seed: int = 0) -> torch.Tensor:
    return torch.stack([row_uniforms(seed, r, new) for r in range(rows)])


def _alone(model, prompts, uniforms, *, temperature, eos=EOS):
    """Each prompt decoded by itself (a batch of one): tokens, ends and log-probs per row."""
    tokens, logps = [], []
    for r, prompt in enumerate(prompts):
        row_logps: list[list[float]] = []
        tokens += decode(model, [prompt], uniforms[r:r + 1], max_new_tokens=uniforms.shape[1],
                         temperature=temperature, top_p=1.0, eos_ids=list(eos), pad_id=PAD, batch_size=1,
                         token_logps=row_logps)
        logps += row_logps
    return tokens, logps


def _continuous(model, prompts, uniforms, *, temperature, batch_size, refill_at, eos=EOS, stats=None):
    logps: list[list[float]] = []
    tokens = decode_continuous(model, prompts, uniforms, max_new_tokens=uniforms.shape[1], temperature=temperature,
                               top_p=1.0, eos_ids=list(eos), pad_id=PAD, batch_size=batch_size,
                               refill_at=refill_at, token_logps=logps, stats=stats)
    return tokens, logps


@cache
def _eos(name: str, temperature: float) -> tuple[int, ...]:
    """Sampling: :data:`EOS`. Greedy: a tiny random model repeats itself, so EOS is three tokens its greedy
    rows emit (rows 3, 7 and 8 at steps 3, 7 and 8): rows then end at different steps, some not at all."""
    if temperature:
        return EOS
    free, _ = _alone(_model(name), PROMPTS, _uniforms(len(PROMPTS), 12), temperature=0.0, eos=())
    return tuple({free[r][0][r] for r in (3, 7, 8)})


def _logps_close(a: list[list[float]], b: list[list[float]]) -> bool:
    # A different batch shape rounds fp32 sums differently (~1e-7 here); a wrong context moves them by far more.
    return [len(x) for x in a] == [len(y) for y in b] and all(
        abs(p - q) <= 1e-6 for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True))


def _equals_alone(name: str, temperature: float, settings_: list[tuple[int, int]]) -> bool:
    model, eos = _model(name), _eos(name, temperature)
    uniforms = _uniforms(len(PROMPTS), 12)
    alone, alone_logps = _alone(model, PROMPTS, uniforms, temperature=temperature, eos=eos)
    for batch_size, refill_at in settings_:
        tokens, logps = _continuous(model, PROMPTS, uniforms, temperature=temperature, batch_size=batch_size,
                                    refill_at=refill_at, eos=eos)
        if tokens != alone or not _logps_close(logps, alone_logps):
            return False
    return True


SETTINGS = [(1, 1), (2, 1), (3, 1), (3, 3), (4, 2), (11, 5)]


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_every_completion_equals_decoding_its_prompt_alone(name, temperature):
    model, eos = _model(name), _eos(name, temperature)
    uniforms = _uniforms(len(PROMPTS), 12)
    alone, _ = _alone(model, PROMPTS, uniforms, temperature=temperature, eos=eos)
    ends = {len(t) for t, finished in alone if finished}
    assert len(ends) >= 3 and not all(f for _, f in alone), "rows must end at different steps, some not at all"
    assert _equals_alone(name, temperature, SETTINGS)
    # Rows were replaced: more prefills than batches of 3 (a prefill is a forward that adds prompt tokens).
    stats = DecodeStats()
    _continuous(model, PROMPTS, uniforms, temperature=temperature, batch_size=3, refill_at=1, eos=eos, stats=stats)
    assert stats.prompt_tokens == sum(len(p) for p in PROMPTS)
    assert stats.new_tokens == sum(len(t) for t, _ in alone)
    assert stats.forwards < sum(len(t) for t, _ in alone) + len(PROMPTS)


def _plant_wrong_position(monkeypatch):
    """Each newcomer's first decoding position off by one."""
    real = continuous.prefill

    def shifted(*args, **kwargs):
        out, cache_, mask, positions = real(*args, **kwargs)
        return out, cache_, mask, positions + 1

    monkeypatch.setattr(continuous, "prefill", shifted)


def _plant_slot_not_reset(monkeypatch):
    """A joined row attends to the positions before its own first one (its slot's mask never cleared)."""
    real = continuous.join_rows

    def unreset(batch, newcomers, max_new_tokens):
        joined = real(batch, newcomers, max_new_tokens)
        if batch is not None:
            joined.mask[:, :joined.cache.get_seq_length()] = 1
        return joined

    monkeypatch.setattr(continuous, "join_rows", unreset)


def _plant_newcomers_left_aligned(monkeypatch):
    """The newcomers' keys and values written from position 0 instead of ending where the batch's end."""
    real = continuous.PreallocatedLayer.stacked.__func__

    def left(cls, upper, lower, capacity):
        layer = real(cls, upper, lower, capacity)
        shift = layer.length - lower.length
        if shift:
            for buffer in (layer._keys, layer._values):
                buffer[len(upper._keys):, :, :layer.length] = buffer[len(upper._keys):, :, :layer.length].roll(
                    -shift, dims=2)
        return layer

    monkeypatch.setattr(continuous.PreallocatedLayer, "stacked", classmethod(left))


@pytest.mark.parametrize("plant", [_plant_wrong_position, _plant_slot_not_reset, _plant_newcomers_left_aligned])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_planted_mistake_in_the_joins_fails_the_equality(name, plant, monkeypatch):
    plant(monkeypatch)
    assert not _equals_alone(name, 0.0, [(3, 1)])


def test_the_cache_keeps_only_positions_some_row_attends_to(monkeypatch):
    """Leading positions every row masks are cut when rows end: the cache never outgrows one row's span."""
    model, widths = _model("gpt2"), []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(
        kwargs["attention_mask"].shape[1] if kwargs.get("attention_mask") is not None else 0), with_kwargs=True)
    try:
        prompts = PROMPTS * 4  # many joins: without cuts the cache would grow with every refill
        _continuous(model, prompts, _uniforms(len(prompts), 12), temperature=1.0, batch_size=3, refill_at=1)
        assert max(widths) <= max(len(p) for p in prompts) + 12
        widths.clear()
        monkeypatch.setattr(continuous, "unattended_prefix", lambda mask: 0)  # planted: never cut
        _continuous(model, prompts, _uniforms(len(prompts), 12), temperature=1.0, batch_size=3, refill_at=1)
        assert max(widths) > max(len(p) for p in prompts) + 12
    finally:
        hook.remove()


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["gpt2", "llama"]),
       lengths=st.lists(st.integers(1, 10), min_size=1, max_size=8),
       new=st.integers(1, 8), batch_size=st.integers(1, 5), refill=st.integers(1, 5),
       temperature=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 1000))
def test_property_equal_to_decoding_alone(name, lengths, new, batch_size, refill, temperature, seed):
    model = _model(name)
    prompts = [[(seed + 11 * i + 5 * j) % 59 + 5 for j in range(n)] for i, n in enumerate(lengths)]
    uniforms = _uniforms(len(prompts), new, seed)
    alone, alone_logps = _alone(model, prompts, uniforms, temperature=temperature)
    tokens, logps = _continuous(model, prompts, uniforms, temperature=temperature, batch_size=batch_size,
                                refill_at=min(refill, batch_size))
    assert tokens == alone
    assert _logps_close(logps, alone_logps)


def test_progress_stop_and_bad_settings():
    model, uniforms = _model("gpt2"), _uniforms(len(PROMPTS), 12)
    done: list[int] = []
    decode_continuous(model, PROMPTS, uniforms, max_new_tokens=12, temperature=1.0, top_p=1.0, eos_ids=list(EOS),
                      pad_id=PAD, batch_size=3, on_batch=done.append)
    assert done == sorted(done) and done[-1] == len(PROMPTS)
    polls = iter(range(100))
    stopped = decode_continuous(model, PROMPTS, uniforms, max_new_tokens=12, temperature=1.0, top_p=1.0,
                                eos_ids=[], pad_id=PAD, batch_size=3, stop=lambda: next(polls) >= 4)
    started = [t for t, _ in stopped if t]
    assert len(started) == 3 and all(len(t) == 4 for t in started)  # 4 polls passed: a prefill, 3 steps
    with pytest.raises(ValueError, match=r"refill_at must be in \[1, batch_size=3\], got 4"):
        decode_continuous(model, PROMPTS, uniforms, max_new_tokens=12, temperature=1.0, top_p=1.0, eos_ids=[1],
                          pad_id=PAD, batch_size=3, refill_at=4)
    with pytest.raises(ValueError, match=r"uniforms of shape \(2, 3\), expected \(11, 12\)"):
        decode_continuous(model, PROMPTS, torch.rand(2, 3), max_new_tokens=12, temperature=1.0, top_p=1.0,
                          eos_ids=[1], pad_id=PAD, batch_size=3)


def test_a_sliding_window_model_decodes_batch_by_batch():
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, sliding_window=4)).eval()
    uniforms = _uniforms(len(PROMPTS), 12)
    expected = decode(model, PROMPTS, uniforms, max_new_tokens=12, temperature=1.0, top_p=1.0, eos_ids=list(EOS),
                      pad_id=PAD, batch_size=3)
    stats = DecodeStats()
    assert decode_continuous(model, PROMPTS, uniforms, max_new_tokens=12, temperature=1.0, top_p=1.0,
                             eos_ids=list(EOS), pad_id=PAD, batch_size=3, stats=stats) == expected
    assert stats.prompt_tokens == sum(len(p) for p in PROMPTS) and stats.forwards > 0
