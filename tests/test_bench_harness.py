"""The DPO-vs-TRL benchmark harness runs end to end on a tiny model (correctness only, no timing asserts)."""

from __future__ import annotations

import math

import pytest
from conftest import import_benchmark


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("dpo_vs_trl")


@pytest.fixture
def spec(bench, hh_path):
    from dpo_bench_setup import BenchSpec

    return BenchSpec(case="tiny-gpt2", batch=2, max_length=64, max_prompt_length=32, steps=1, warmup=1,
                     hidden=32, layers=1, heads=2, lr=1e-3, hh_path=str(hh_path))


def _check(result: dict, spec) -> None:
    for key in ("steps_per_s", "tokens_per_s", "seconds_per_step", "peak_rss_mib", "rss_after_imports_mib"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["peak_rss_mib"] >= result["rss_after_imports_mib"]
    assert result["timed_tokens"] > 0
    assert len(result["losses"]) == spec.total_steps
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1


def test_pairs_are_fed_in_the_trainers_order(bench, spec):
    from dpo_bench_setup import build_tokenizer, ordered_pairs, step_tokens

    pairs, visited = ordered_pairs(spec, build_tokenizer(spec))
    assert len(pairs) == spec.batch * spec.total_steps
    assert sorted(p.index for p in visited) == [p.index for p in pairs] == list(range(len(pairs)))
    first = visited[: spec.batch]
    assert step_tokens(visited, spec.batch, 0) == sum(
        2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in first
    )


def test_spec_rejects_bad_settings(bench):
    from dpo_bench_setup import BenchSpec

    with pytest.raises(ValueError, match="reference"):
        BenchSpec(reference="adapters")
    with pytest.raises(ValueError, match="model_path"):
        BenchSpec(case="smollm2")
    with pytest.raises(ValueError, match="warmup"):
        BenchSpec(warmup=0)
    with pytest.raises(ValueError, match="device"):
        BenchSpec(device="tpu")


def test_training_flops_count_every_weight_once_and_the_reference_forward(bench, tiny_gpt2, tiny_llama):
    from dpo_bench_setup import training_flops

    # GPT-2 ties its output layer to the input embedding: the shared matrix is counted once, as the head.
    n_gpt2 = sum(p.numel() for p in tiny_gpt2.parameters())
    assert training_flops(tiny_gpt2, 10, reference_forward=False) == 6 * n_gpt2 * 10
    assert training_flops(tiny_gpt2, 10, reference_forward=True) == 8 * n_gpt2 * 10
    # Llama's head is its own matrix; the input embedding is a lookup, not counted.
    n_llama = sum(p.numel() for p in tiny_llama.parameters()) - tiny_llama.get_input_embeddings().weight.numel()
    assert training_flops(tiny_llama, 3, reference_forward=False) == 18 * n_llama


@pytest.mark.parametrize("checkpointing, padding_free", [(False, True), (True, True), (False, False)])
def test_alignkit_and_trl_runs_report_numbers_and_agree(bench, spec, monkeypatch, tmp_path, checkpointing,
                                                        padding_free):
    pytest.importorskip("trl")
    from dataclasses import replace

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    spec = replace(spec, gradient_checkpointing=checkpointing, padding_free=padding_free)
    ours, theirs = bench.run_alignkit(spec), bench.run_trl(spec)
    _check(ours, spec)
    _check(theirs, spec)
    assert ours["timed_tokens"] == theirs["timed_tokens"]  # the same pairs at every step
    # Same weights, data, optimizer and schedule: the second step's loss (after one update) agrees too.
    assert ours["losses"][1] == pytest.approx(theirs["losses"][1], abs=1e-4)
    run = {"spec": spec.to_dict(), "results": {"alignkit": {**ours, "load_before": 0.5, "load_after": 0.6},
                                                "trl": {**theirs, "load_before": 0.5, "load_after": 0.6}},
           "ratios": {"steps_per_s": 2.0, "tokens_per_s": 2.0, "peak_rss": 0.5, "peak_rss_over_imports": 0.4}}
    rows = bench.markdown_rows(run)
    assert len(rows) == 3 and rows[2].count("|") == bench.TABLE_HEADER[0].count("|")


@pytest.mark.slow
def test_compare_runs_each_framework_in_its_own_process(bench, spec):
    pytest.importorskip("trl")
    from dataclasses import replace

    run = bench.compare(replace(spec, reference="cached"))
    assert set(run["results"]) == {"alignkit", "trl"}
    assert run["ratios"]["steps_per_s"] > 0 and run["ratios"]["peak_rss"] > 0
    for result in run["results"].values():
        _check(result, spec)
