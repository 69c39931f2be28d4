"""pass@k over training seeds: Student-t intervals worked by hand, and the gain paired seed by seed."""

from __future__ import annotations

import math

import pytest

from alignkit.report.accuracy_seeds import accuracy_over_seeds, accuracy_seeds_markdown

T_2 = 4.302652729911275  # Student t, 2 degrees of freedom, two-sided 95%


def _row(p1: float, p4: float) -> dict:
    # As report.json holds it: k as string keys.
    return {"pass_at": {"1": {"estimate": p1, "low": 0.0, "high": 1.0},
                        "4": {"estimate": p4, "low": 0.0, "high": 1.0}}}


def _section(before: tuple[float, float], after: tuple[float, float]) -> dict:
    return {"before": _row(*before), "after": _row(*after)}


def test_mean_and_t_interval_by_hand():
    sections = {0: _section((0.1, 0.3), (0.2, 0.5)), 1: _section((0.1, 0.3), (0.3, 0.5)),
                2: _section((0.1, 0.3), (0.4, 0.5))}
    out = accuracy_over_seeds(sections)
    assert out["seeds"] == [0, 1, 2] and list(out["pass_at"]) == ["1", "4"]
    p1 = out["pass_at"]["1"]
    half = T_2 * 0.1 / math.sqrt(3)  # sd of 0.2, 0.3, 0.4 is 0.1
    assert p1["after"]["estimate"] == pytest.approx(0.3)
    assert (p1["after"]["low"], p1["after"]["high"]) == pytest.approx((0.3 - half, 0.3 + half))
    assert (p1["before"]["low"], p1["before"]["high"]) == pytest.approx((0.1, 0.1))  # the same every seed
    assert p1["gain"]["estimate"] == pytest.approx(0.2)
    assert (p1["gain"]["low"], p1["gain"]["high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert out["pass_at"]["4"]["gain"]["estimate"] == pytest.approx(0.2)
    table = accuracy_seeds_markdown(out)
    assert f"| pass@1 | 10.0% [10.0, 10.0] | 30.0% [{100 * (0.3 - half):.1f}, {100 * (0.3 + half):.1f}] |" in table


def test_the_gain_is_paired_by_seed_not_by_position():
    # Each seed gains exactly 0.1 although the seeds differ a lot: a paired interval has no width; an unpaired
    # one (difference of the means with both spreads), or one pairing the dict's order, would be wide.
    sections = {2: _section((0.3, 0.5), (0.4, 0.6)), 0: _section((0.1, 0.3), (0.2, 0.4)),
                1: _section((0.2, 0.4), (0.3, 0.5))}
    gain = accuracy_over_seeds(sections)["pass_at"]["1"]["gain"]
    assert (gain["estimate"], gain["low"], gain["high"]) == pytest.approx((0.1, 0.1, 0.1))


def test_int_keys_and_mismatched_k():
    row = {"pass_at": {1: {"estimate": 0.5, "low": 0.4, "high": 0.6}}}
    out = accuracy_over_seeds({0: {"before": row, "after": row}, 1: {"before": row, "after": row}})
    assert out["pass_at"]["1"]["gain"]["estimate"] == 0.0
    one = accuracy_over_seeds({3: {"before": row, "after": row}})
    assert "| pass@1 | 50.0% (one seed) | 50.0% (one seed) | 0.0% (one seed) |" in accuracy_seeds_markdown(one)
    other = {"pass_at": {2: {"estimate": 0.5, "low": 0.4, "high": 0.6}}}
    with pytest.raises(ValueError, match="seed 1 measured pass@k for other k"):
        accuracy_over_seeds({0: {"before": row, "after": row}, 1: {"before": other, "after": other}})
    with pytest.raises(ValueError, match="no runs"):
        accuracy_over_seeds({})
