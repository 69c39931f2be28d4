"""benchmarks/scaling.py runs end to end on its smallest point (correctness only, no timing asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import BENCH_DIR, import_benchmark

SMALLEST = ["--seq-lens", "256", "--vocabs", "32768", "--seq-sweep-vocab", "32768", "--vocab-sweep-len", "256"]


@pytest.fixture(scope="module")
def scaling():
    return import_benchmark("scaling")


def test_smallest_point_gives_finite_rows_tables_and_plots(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("matplotlib")
    out = tmp_path / "scaling"
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "scaling.py"), *SMALLEST, "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["framework"], r["seq_len"], r["vocab"]) for r in rows] == [("alignkit", 256, 32768),
                                                                          ("trl", 256, 32768)]
    for row in rows:
        assert row["status"] == "ok" and row["reason"] == ""
        for key in ("tokens_per_s", "seconds_per_step", "peak_memory_mib", "peak_over_imports_mib"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["framework"], key)
        # One timed step of one pair: two sequences of 256 tokens, whatever the speed.
        assert row["tokens_per_s"] * row["seconds_per_step"] == pytest.approx(2 * 256)
        assert row["last_loss"] == pytest.approx(math.log(2), abs=1e-3)  # one small update from log 2
    tables = (out / "tables.md").read_text()
    assert "## seq_sweep" in tables and "## vocab_sweep" in tables and "skipped" not in tables
    assert tables.count("| 256 | 32768 |") == 2  # the shared point, once per sweep
    for name in ("seq_sweep.png", "vocab_sweep.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_point_over_the_memory_cap_is_skipped_with_its_reason(scaling, tmp_path):
    from dpo_bench_setup import BenchSpec

    spec = BenchSpec(case="tiny-llama", batch=1, max_length=64, max_prompt_length=32, steps=1, warmup=1,
                     hidden=32, layers=1, heads=2, vocab=1000)
    row = scaling.measure_point("alignkit", spec, rss_cap_mib=1.0, timeout=300)  # any interpreter passes 1 MiB
    assert row["status"] == "skipped" and "cap" in row["reason"]
    assert math.isnan(row["tokens_per_s"]) and math.isnan(row["peak_memory_mib"])  # no numbers for a skip
    sweep = scaling.Sweep("seq_sweep", "seq_len", (64,), 1000)
    table = scaling.markdown_table(sweep, [row])
    assert "| 64 | 1000 | skipped | - |" in table[2]
    assert any(line.startswith("Skipped: L=64 V=1000") for line in table)


def test_synthetic_pairs_fill_the_sequence_and_avoid_special_ids():
    setup = import_benchmark("dpo_bench_setup")
    spec = setup.BenchSpec(case="tiny-llama", batch=2, max_length=48, max_prompt_length=16, steps=1, warmup=1, vocab=50)
    pairs, visited = setup.ordered_pairs(spec, setup.build_tokenizer(spec))
    assert len(pairs) == 4 and sorted(p.index for p in visited) == [0, 1, 2, 3]
    for pair in pairs:
        assert (len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)) == (16, 32, 32)
        assert min(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids) >= 3  # pad/eos/unk never drawn
        assert max(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids) < spec.vocab
    assert setup.step_tokens(visited, spec.batch, 0) == 2 * 2 * 48
    assert setup.build_tokenizer(spec).pad_token_id == 0
