"""The peak matmul throughput and the read bandwidth: measured once per machine (and dtype), then read back from
the JSON cache."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from alignkit.train.peak_flops import (
    measure_matmul_flops,
    measure_read_bandwidth,
    peak_bandwidth,
    peak_flops,
    peak_key,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))


def test_the_second_call_reads_the_cache():
    first = peak_flops(CPU, "float32", seconds=0.05)
    assert not first["cached"] and first["flops_per_second"] > 0
    record = json.loads(open(first["file"]).read())
    assert record["key"] == peak_key(CPU, "float32") and record["key"]["torch"] == torch.__version__
    second = peak_flops(CPU, "float32", seconds=0.05)
    assert second["cached"] and second["flops_per_second"] == first["flops_per_second"]
    assert peak_flops(CPU, "bfloat16", seconds=0.05)["file"] != first["file"]  # one entry per dtype


@pytest.mark.parametrize("content", [b"{not json", pickle.dumps({"flops_per_second": 1e30}), b"[]",
                                     b'{"flops_per_second": -1}', b'{"key": {}, "flops_per_second": 1e30}'])
def test_a_corrupt_or_foreign_cache_file_is_measured_again(content):
    path = peak_flops(CPU, "float32", seconds=0.05)["file"]
    with open(path, "wb") as f:
        f.write(content)
    again = peak_flops(CPU, "float32", seconds=0.05)
    assert not again["cached"] and 0 < again["flops_per_second"] < 1e30
    assert json.loads(open(path).read())["flops_per_second"] == again["flops_per_second"]


def test_the_benchmark_takes_the_size_it_is_given():
    flops, size = measure_matmul_flops(CPU, "float32", size=64, seconds=0.01)
    assert size == 64 and flops > 0


def test_the_read_bandwidth_is_measured_once_and_kept_apart_from_the_flops():
    first = peak_bandwidth(CPU, seconds=0.05)
    assert not first["cached"] and first["bytes_per_second"] > 0
    second = peak_bandwidth(CPU, seconds=0.05)
    assert second["cached"] and second["bytes_per_second"] == first["bytes_per_second"]
    assert first["file"] != peak_flops(CPU, "float32", seconds=0.05)["file"]
    with open(first["file"], "w") as f:
        f.write('{"bytes_per_second": "fast"}')
    assert not peak_bandwidth(CPU, seconds=0.05)["cached"]
    rate, size = measure_read_bandwidth(CPU, megabytes=4, seconds=0.01)
    assert size == 4 * 2**20 and rate > 0


def test_the_best_of_at_least_min_repeats_is_kept_with_injected_timings():
    """A measure is the fastest of its repetitions, and one slow repetition (the machine busy) never is the
    measure: at least MIN_REPEATS run even when the first already overran the time allowed."""
    from alignkit.models.measured import MIN_REPEATS, best_seconds

    durations = iter([5.0, 0.9, 0.5, 0.7, 0.6, 0.8, 0.4])  # the warm-up is untimed; 5.0 s overruns alone
    now = [0.0]

    def clock() -> float:
        return now[0]

    def work() -> None:
        now[0] += next(durations, 0.0) if calls.append(1) or len(calls) > 1 else 0.0

    calls: list[int] = []
    best = best_seconds(CPU, work, 1.0, clock=clock)
    assert len(calls) - 1 == MIN_REPEATS  # 5 timed repetitions although 1 s had passed after the first
    assert best == 0.5  # the fastest of 5.0, 0.9, 0.5, 0.7, 0.6


def test_a_cached_peak_below_what_a_run_reached_is_measured_again():
    """The rule, with injected measures: 210 GFLOP/s cached at a busy moment, a run reaching 300 -> measured
    again and the best kept; a run below the cached peak, or reaching the same figure again, measures nothing."""
    measures = iter([(210e9, 1024), (421e9, 1024), (400e9, 1024)])
    calls: list[float] = []

    def measure() -> tuple[float, int]:
        value = next(measures)
        calls.append(value[0])
        return value

    first = peak_flops(CPU, "float32", measure=measure)
    assert first["flops_per_second"] == 210e9 and first["measured"] and first["remeasured"] is None
    assert peak_flops(CPU, "float32", at_least=150e9, measure=measure)["cached"]  # below: nothing measured
    again = peak_flops(CPU, "float32", at_least=300e9, measure=measure)
    assert again["flops_per_second"] == 421e9 and not again["cached"] and "300" in again["remeasured"]
    assert json.loads(open(again["file"]).read())["flops_per_second"] == 421e9
    assert peak_flops(CPU, "float32", at_least=300e9, measure=measure)["cached"]  # 421 > 300: no re-measure
    # A run above even the new peak measures once more; a lower measure never replaces the best one.
    higher = peak_flops(CPU, "float32", at_least=450e9, measure=measure)
    assert higher["flops_per_second"] == 421e9 and calls == [210e9, 421e9, 400e9]
    assert peak_flops(CPU, "float32", at_least=450e9, measure=measure)["cached"]  # checked against 450 already


def test_the_report_says_when_the_peak_was_measured():
    from alignkit.report.timing import time_markdown
    from alignkit.timing import PhaseClock
    from alignkit.workflow.time_breakdown import time_breakdown

    ticks = iter([0.0, 1.0])
    clock = PhaseClock(clock=lambda: next(ticks))
    with clock.phase("training"):
        clock.count_flops(1e6, "float32")
    section = time_breakdown(clock, 1.0, CPU)
    peak = section["peak_flops"]["float32"]
    assert peak["measured"].endswith("Z") and peak["remeasured"] is None
    assert f"measured {peak['measured']}" in time_markdown(section)
