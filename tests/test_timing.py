"""The phase accounting of alignkit.timing, worked by hand on a fake clock."""

from __future__ import annotations

import threading

import pytest

from alignkit.timing import OTHER, PhaseClock, count_flops, count_weight_reads, phase, recording, timed


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_add_up_by_hand():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with recording(clock):
        with phase("loading"):
            fake.now += 2
        with phase("training"):
            fake.now += 1  # the training phase's own time
            for _ in range(3):
                with phase("forward/backward"):
                    fake.now += 4
                    count_flops(6e9, "float32")
                with phase("optimizer"):
                    fake.now += 0.5
        fake.now += 1.5  # outside every phase
        with phase("evaluation"), phase("generation"):
            fake.now += 3
            count_flops(1e9, "bfloat16")
    wall = 2 + 1 + 3 * 4.5 + 1.5 + 3  # 21
    rows = {tuple(r["path"]): r for r in clock.rows(wall, {"float32": 1e10, "bfloat16": 4e9})}
    assert list(rows) == [("loading",), ("training",), ("training", "forward/backward"), ("training", "optimizer"),
                          ("evaluation",), ("evaluation", "generation"), (OTHER,)]
    assert rows[("training",)]["seconds"] == 14.5
    assert rows[("training", "forward/backward")]["seconds"] == 12
    assert rows[("training", "forward/backward")]["calls"] == 3
    assert rows[("training", "optimizer")]["seconds"] == 1.5
    assert rows[(OTHER,)]["seconds"] == pytest.approx(1.5)
    assert sum(r["share"] for r in rows.values() if r["depth"] == 0) == pytest.approx(1.0)
    fb = rows[("training", "forward/backward")]
    assert fb["flops"] == {"float32": 18e9}
    assert fb["flops_per_second"] == pytest.approx(1.5e9)  # 18 GFLOP in 12 s
    assert fb["peak_fraction"] == pytest.approx(0.15)  # of 10 GFLOP/s
    assert rows[("evaluation", "generation")]["peak_fraction"] == pytest.approx(1e9 / 4e9 / 3)
    assert rows[("loading",)]["flops_per_second"] is None  # no FLOPs counted: no rate


def test_decoding_reports_tokens_per_second_and_the_weight_bandwidth_bound_by_hand():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with recording(clock), phase("generation"):
        fake.now += 4
        count_weight_reads(10 * 2e8, 320)  # 10 forwards over 200 MB of weights, 320 tokens
        count_weight_reads(2e8, 0)  # a prefill reads the weights and samples nothing yet
    (row, _) = clock.rows(4.0, {}, bandwidth=1e9)
    assert row["tokens_per_second"] == 80.0
    assert row["weight_bytes"] == 2.2e9
    assert row["bandwidth_fraction"] == pytest.approx(2.2 / 4)  # 2.2 s of reads at 1 GB/s in 4 s
    assert clock.rows(4.0, {})[0]["bandwidth_fraction"] is None  # no bandwidth measured: no fraction


def test_a_dtype_without_a_measured_peak_gets_no_fraction():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with recording(clock), phase("training"):
        fake.now += 2
        count_flops(4.0, "float32")
    (row, _) = clock.rows(2.0, {})
    assert row["flops_per_second"] == 2.0 and row["peak_fraction"] is None


def test_a_phase_inside_itself_is_one_phase_and_a_decorated_function_is_timed():
    fake = FakeClock()
    clock = PhaseClock(fake)

    @timed("generation")
    def generate(depth: int) -> int:
        fake.now += 1
        return generate(depth - 1) if depth else 0

    with recording(clock), phase("data preparation"):
        generate(2)
    assert list(clock.totals) == [("data preparation",), ("data preparation", "generation")]
    assert clock.totals[("data preparation", "generation")].seconds == 3
    assert clock.totals[("data preparation", "generation")].calls == 1


def test_without_a_recording_clock_phases_and_flops_are_ignored():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with phase("loading"):
        count_flops(1.0, "float32")
    assert clock.totals == {}


def test_phases_of_another_thread_are_not_timed():
    fake = FakeClock()
    clock = PhaseClock(fake)
    with recording(clock), phase("evaluation"):
        worker = threading.Thread(target=lambda: phase("judge").__enter__())
        worker.start()
        worker.join()
        count_flops(1.0, "float32")
    assert list(clock.totals) == [("evaluation",)]
