"""Bootstrap and normal intervals, subsample spread: hand-worked cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.eval.stats import Interval, bootstrap_ci, mean_ci, subsample_spread


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci([2.0] * 7) == Interval(2.0, 2.0, 2.0)
    assert mean_ci([2.0] * 7) == Interval(2.0, 2.0, 2.0)
    assert bootstrap_ci([5.0]) == Interval(5.0, 5.0, 5.0)
    assert mean_ci([5.0]) == Interval(5.0, 5.0, 5.0)


def test_bootstrap_of_two_values_by_hand():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    est, low, high = bootstrap_ci([0.0, 1.0], n_resamples=20000)
    assert (est, low, high) == (0.5, 0.0, 1.0)
    # The 30% and 70% quantiles both fall inside the 0.5 atom (CDF jumps from 0.25 to 0.75).
    assert bootstrap_ci([0.0, 1.0], n_resamples=20000, confidence=0.4) == Interval(0.5, 0.5, 0.5)


def test_mean_ci_by_hand():
    # mean 3, sample sd sqrt(2.5), se = sqrt(2.5 / 5) = sqrt(0.5); z(0.975) = 1.959964
    est, low, high = mean_ci([1, 2, 3, 4, 5])
    half = 1.959964 * math.sqrt(0.5)
    assert est == 3.0
    assert low == pytest.approx(3.0 - half, abs=1e-5)
    assert high == pytest.approx(3.0 + half, abs=1e-5)
    assert Interval(est, low, high).half_width == pytest.approx(half, abs=1e-5)


def test_bootstrap_agrees_with_the_normal_interval_on_many_values():
    values = np.random.default_rng(0).normal(1.0, 2.0, size=2000)
    boot = bootstrap_ci(values, n_resamples=4000)
    norm = mean_ci(values)
    assert boot.estimate == pytest.approx(values.mean())
    assert boot.low == pytest.approx(norm.low, abs=0.02)
    assert boot.high == pytest.approx(norm.high, abs=0.02)


def test_seeded_and_statistic_pluggable():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, statistic=np.median).estimate == 3.5


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="fraction"):
        subsample_spread([1.0], fraction=0)


def test_subsample_spread_by_hand():
    assert subsample_spread([4.0] * 10) == (4.0, 0.0)
    # fraction 1: every subsample is the whole set.
    mean, std = subsample_spread([1.0, 2.0, 6.0], fraction=1.0)
    assert mean == pytest.approx(3.0) and std == pytest.approx(0.0, abs=1e-12)
    # Halves of [0, 1]: single values 0 or 1, so the spread is about 0.5.
    mean, std = subsample_spread([0.0, 1.0], fraction=0.5, n_subsamples=4000)
    assert mean == pytest.approx(0.5, abs=0.03) and std == pytest.approx(0.5, abs=0.01)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40))
def test_interval_is_ordered_and_inside_the_data_range(values):
    est, low, high = bootstrap_ci(values, n_resamples=200)
    tol = 1e-9 * (1 + max(abs(v) for v in values))
    assert min(values) - tol <= low <= high <= max(values) + tol
    assert est == pytest.approx(float(np.mean(values)))
