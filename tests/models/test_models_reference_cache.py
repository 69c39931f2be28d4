"""The reference log-prob cache: computed once, reused by key, written atomically."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import make_tiny_gpt2
from preference_batches import collate, make_pairs

from alignkit import cache
from alignkit.models.logps import concatenated_forward
from alignkit.models.reference_cache import ReferenceLogpsCache, cache_key

VOCAB = 1000


def collate_fn(pairs):
    return collate(pairs, pad_id=VOCAB - 1)


def count_forwards(model):
    calls = []
    model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_same_key_is_reused_without_recomputing():
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(5, vocab_size=VOCAB)
    calls = count_forwards(model)

    first = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=2, model_id="tiny", progress=False)
    assert len(calls) == 3  # ceil(5 / 2) batches, chosen and rejected in one pass each
    second = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=2, model_id="tiny", progress=False)
    assert len(calls) == 3, "a second build with the same model and data must not run the model"
    assert second.path == first.path and second.path.exists()
    torch.testing.assert_close(second.chosen, first.chosen)

    with torch.no_grad():
        out = concatenated_forward(model, collate_fn(pairs))
    torch.testing.assert_close(first.chosen, out["chosen_logps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(first.rejected, out["rejected_logps"], atol=1e-5, rtol=0)


def test_key_changes_with_data_model_and_settings():
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(4, vocab_size=VOCAB)
    key = cache_key("tiny", model, pairs)
    assert key == cache_key("tiny", model, make_pairs(4, vocab_size=VOCAB)), "deterministic"

    changed = [dict(p) for p in pairs]
    changed[2]["rejected_ids"] = changed[2]["rejected_ids"] + [7]
    assert cache_key("tiny", model, changed) != key
    assert cache_key("tiny", model, pairs[:3]) != key
    assert cache_key("other", model, pairs) != key
    assert cache_key("tiny", model, pairs, extra={"max_length": 128}) != key
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.bias[0] += 1e-3
    assert cache_key("tiny", model, pairs) != key


def test_file_is_written_atomically(monkeypatch):
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(3, vocab_size=VOCAB, seed=9)
    key = cache_key("tiny", model, pairs)
    target = ReferenceLogpsCache.path_for(key)

    real_writing = cache.writing

    @contextmanager
    def crash_after_partial_write(path, mode, **kwargs):
        with real_writing(path, mode, **kwargs) as fh:  # the real writer, failing halfway through its block
            fh.write(b"half a file")
            fh.flush()
            raise OSError("disk full")
        yield fh

    monkeypatch.setattr(cache, "writing", crash_after_partial_write)  # what the cache saves through
    with pytest.raises(OSError, match="disk full"):
        ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=2, model_id="tiny", progress=False)
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.name}*")), "no temporary file left behind"
    monkeypatch.undo()

    built = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=2, model_id="tiny", progress=False)
    assert built.path == target and target.exists()
    assert sorted(p.name for p in target.parent.iterdir() if key in p.name) == [target.name]
    loaded = ReferenceLogpsCache.load(key)
    torch.testing.assert_close(loaded.rejected, built.rejected)


def test_lookup_out_of_range_names_the_cache():
    model = make_tiny_gpt2(vocab_size=VOCAB)
    cache = ReferenceLogpsCache.build(
        model, make_pairs(2, vocab_size=VOCAB), collate_fn, batch_size=2, model_id="tiny", progress=False
    )
    with pytest.raises(IndexError, match="holds 2 pairs"):
        cache.lookup(torch.tensor([0, 5]))


def test_pairs_whose_indices_have_gaps_are_cached_by_index():
    """Tokenization drops examples, so the pairs' dataset positions have gaps (here 0, 1, 3, 6): the cache is
    looked up by position, and a dropped position is never asked for."""
    from functools import partial

    from alignkit.data import TokenizedPair, collate_preference
    from alignkit.models.reference import CachedReference

    model = make_tiny_gpt2(vocab_size=VOCAB)
    raw = make_pairs(4, vocab_size=VOCAB)
    pairs = [TokenizedPair(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"], 1.0, index)
             for p, index in zip(raw, (0, 1, 3, 6), strict=True)]
    collate_pairs = partial(collate_preference, pad_token_id=VOCAB - 1)
    cache = ReferenceLogpsCache.build(model, pairs, collate_pairs, batch_size=3, model_id="gaps", progress=False)
    batch = collate_pairs(pairs[2:])
    chosen, rejected = CachedReference(cache).logps(batch)
    with torch.no_grad():
        out = concatenated_forward(model, batch)
    torch.testing.assert_close(chosen, out["chosen_logps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, out["rejected_logps"], atol=1e-5, rtol=0)


def test_key_tells_the_compute_precision_apart():
    """Values computed under bf16 autocast are never reused by an fp32 run, nor the other way round."""
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(4, vocab_size=VOCAB)
    fp32 = cache_key("tiny", model, pairs)
    bf16 = cache_key("tiny", model, pairs, autocast_dtype=torch.bfloat16)
    assert bf16 != fp32
    assert bf16 == cache_key("tiny", model, pairs, autocast_dtype=torch.bfloat16), "deterministic"


def test_build_computes_under_the_autocast_it_is_given_and_keys_it():
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(4, vocab_size=VOCAB, seed=3)
    calls = count_forwards(model)
    fp32 = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=4, model_id="tiny", progress=False)
    bf16 = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=4, model_id="tiny",
                                     autocast_dtype=torch.bfloat16, progress=False)
    assert len(calls) == 2, "the bf16 build must not reuse the fp32 values"
    assert bf16.path != fp32.path and bf16.chosen.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = concatenated_forward(model, collate_fn(pairs))
    # Bit for bit the policy's forward under the same autocast: log-ratios of exactly 0 at the first step.
    assert torch.equal(bf16.chosen, out["chosen_logps"].float())
    assert torch.equal(bf16.rejected, out["rejected_logps"].float())
    assert not torch.equal(bf16.chosen, fp32.chosen)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast does not leak into an fp32 build
        again = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=4, model_id="tiny-again",
                                          progress=False)
    assert torch.equal(again.chosen, fp32.chosen)


@pytest.mark.parametrize("damage", ["garbage", "nan", "other-tensors", "wrong-shape"])
def test_a_damaged_cache_file_is_computed_again_and_rewritten(monkeypatch, tmp_path, damage):
    """A reference cache file that is not what build writes (unreadable, a NaN, other tensors) is a miss:
    the log-probs are computed again and the file replaced; nothing non-finite reaches a loss."""
    from safetensors.torch import save_file

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    model = make_tiny_gpt2(vocab_size=VOCAB)
    pairs = make_pairs(3, vocab_size=VOCAB)
    calls = count_forwards(model)
    first = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=4, model_id="tiny", progress=False)
    if damage == "garbage":
        first.path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    else:
        bad = {"nan": {"chosen": first.chosen.clone().fill_(float("nan")), "rejected": first.rejected},
               "other-tensors": {"chosen": first.chosen},
               "wrong-shape": {"chosen": first.chosen[None], "rejected": first.rejected[None]}}[damage]
        save_file(bad, str(first.path))
    again = ReferenceLogpsCache.build(model, pairs, collate_fn, batch_size=4, model_id="tiny", progress=False)
    assert len(calls) == 2 and torch.equal(again.chosen, first.chosen) and torch.equal(again.rejected, first.rejected)
    assert ReferenceLogpsCache.load(cache_key("tiny", model, pairs, None)) is not None  # rewritten whole
