"""A tiny run's report says where its time went: phases with shares of the wall time, and throughput."""

from __future__ import annotations

import json

import pytest
from workflow_recipes import tiny_jsonl_recipe

from alignkit.commands.run import run_recipe_file


def test_a_tiny_run_reports_where_the_time_went(tmp_path, monkeypatch):
    # A cache of its own without reference log-probs, so this run computes them (an earlier test of the session
    # may have cached the same ones, leaving that phase without FLOPs); the session's machine measurements
    # (peak FLOP/s, bf16 speed) are copied in rather than measured again.
    import shutil

    from alignkit.cache import cache_dir

    own_cache = tmp_path / "cache"
    shutil.copytree(cache_dir(), own_cache, ignore=shutil.ignore_patterns("reference_logps"))
    monkeypatch.setenv("ALIGNKIT_CACHE", str(own_cache))
    recipe = tiny_jsonl_recipe(tmp_path)
    run_recipe_file(str(recipe), ["eval={reward: vader_sentiment, num_prompts: 2, samples_per_prompt: 1, "
                                  "max_new_tokens: 4, batch_size: 2}", "reference.mode=cached"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    section = report["time_breakdown"]
    assert section["wall_seconds"] == pytest.approx(report["wall_seconds"])
    rows = {tuple(r["path"]): r for r in section["phases"]}
    for path in [("loading",), ("data preparation",), ("training",), ("training", "forward/backward"),
                 ("training", "optimizer"), ("saving the model",), ("evaluation",),
                 ("evaluation", "generation"), ("evaluation", "scoring"), ("evaluation", "KL")]:
        assert path in rows, path
    # Structure and consistency only, never timings: on a loaded machine any phase (or the remainder) may take
    # any share, and a peak measured under load may be below what a phase reached.
    top = [r for r in section["phases"] if r["depth"] == 0]
    assert sum(r["share"] for r in top) == pytest.approx(1.0, abs=1e-6)
    other = [r for r in top if r["phase"].startswith("other")]
    assert len(other) == 1 and other[0]["seconds"] == pytest.approx(
        max(section["wall_seconds"] - sum(r["seconds"] for r in top if r is not other[0]), 0.0), abs=1e-6)
    for path, row in rows.items():  # a child's time is part of its parent's
        assert row["seconds"] >= 0 and row["share"] == pytest.approx(row["seconds"] / section["wall_seconds"])
        if len(path) > 1:
            assert row["seconds"] <= rows[path[:-1]]["seconds"] + 1e-9
    peaks = {d: p["flops_per_second"] for d, p in section["peak_flops"].items()}
    assert peaks and all(p > 0 for p in peaks.values())
    for path in [("training", "forward/backward"), ("training", "reference log-probs"), ("training", "held-out loss"),
                 ("evaluation", "generation"), ("evaluation", "KL", "log-probs")]:
        row = rows[path]
        assert row["flops"] and set(row["flops"]) <= set(peaks), row  # every dtype computed in has its peak
        assert row["flops_per_second"] == pytest.approx(sum(row["flops"].values()) / row["seconds"]), row
        assert row["peak_fraction"] == pytest.approx(
            sum(f / peaks[d] for d, f in row["flops"].items()) / row["seconds"]), row
    generation = rows[("evaluation", "generation")]
    assert generation["tokens"] > 0 and generation["weight_bytes"] > 0
    assert generation["tokens_per_second"] == pytest.approx(generation["tokens"] / generation["seconds"])
    bandwidth = section["read_bandwidth"]["bytes_per_second"]
    assert bandwidth > 0 and generation["bandwidth_fraction"] == pytest.approx(
        generation["weight_bytes"] / bandwidth / generation["seconds"])
    assert rows[("training", "forward/backward")]["bandwidth_fraction"] is None  # decoding phases only
    assert report["precision"]["used"] in ("fp32", "bf16 autocast") and report["precision"]["reason"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Where the time went" in markdown and "| · forward/backward |" in markdown
    assert "| tokens/s | of bandwidth bound |" in markdown and "Memory read bandwidth measured here" in markdown
    assert f"- precision: {report['precision']['used']}" in markdown


def test_each_phase_says_its_precision_and_eval_keeps_its_own_time(tmp_path):
    """Pairs sampled in bf16 while training and evaluation compute in fp32: the time table and report.json
    say which phase ran in which; `alignkit eval` then records and prints its own time, not the run's."""
    import io

    from demo_recipe import DEMO_RECIPE, tiny_demo_overrides, tiny_llama_folder
    from rich.console import Console

    from alignkit.commands.eval import evaluate_run

    out = tmp_path / "run"
    overrides = [*tiny_demo_overrides(tiny_llama_folder(tmp_path / "base"), out),
                 "data.source.generation_dtype=bfloat16", "train.precision=fp32"]
    run_recipe_file(DEMO_RECIPE, overrides)
    report = json.loads((out / "report.json").read_text())
    rows = {tuple(r["path"]): r for r in report["time_breakdown"]["phases"]}
    assert rows[("data preparation", "generation")]["precision"] == ["bfloat16"]
    for path in [("training", "reference log-probs"), ("training", "forward/backward"),
                 ("evaluation", "generation"), ("evaluation", "KL", "log-probs")]:
        assert rows[path]["precision"] == ["float32"], path
    assert rows[("evaluation", "scoring")]["precision"] == []  # a reward function, no model
    markdown = (out / "report.md").read_text()
    assert "| · generation | bf16 |" in markdown and "| · forward/backward | fp32 |" in markdown
    assert "- precision by phase: data preparation › generation bf16, training › reference log-probs fp32" in markdown

    printed = io.StringIO()
    evaluated = evaluate_run(out, console=Console(file=printed, width=200))
    assert evaluated["time_breakdown"] == report["time_breakdown"]  # the run's table, as it was
    own = evaluated["eval_time_breakdown"]
    assert own["wall_seconds"] != report["time_breakdown"]["wall_seconds"]
    own_rows = {tuple(r["path"]) for r in own["phases"]}
    assert {("loading",), ("evaluation",), ("evaluation", "judge")} <= own_rows and ("training",) not in own_rows
    text = printed.getvalue()
    assert "where the time of the latest `alignkit eval` went" in text and "where the time went" not in text
    assert f"{own['wall_seconds']:.2f}" in text
    assert "Where the time of the latest `alignkit eval` went" in (out / "report.md").read_text()
