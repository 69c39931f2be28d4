"""Win-rate statistics against hand-worked cases; the both-orders rule."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.eval.judges import Judge, Verdict, judge_pairs, pair_score
from alignkit.eval.winrate import fit_length_logistic, length_controlled_win_rate, win_rate_report


def V(choice):  # noqa: N802 - reads like the letter it wraps
    return Verdict(choice)


@pytest.mark.parametrize(
    ("first", "second", "score"),
    [
        ("A", "B", 1.0),  # policy preferred as A and as B
        ("B", "A", 0.0),  # baseline preferred in both orders
        ("A", "A", 0.5),  # position bias: the orders disagree
        ("B", "B", 0.5),
        ("tie", "tie", 0.5),
        (None, "B", 0.5),  # an unreadable verdict makes the pair a tie
        ("A", None, 0.5),
        ("tie", "B", 0.5),
    ],
)
def test_pair_score_both_orders_rule(first, second, score):
    assert pair_score(V(first), V(second)) == score


class _AlwaysFirst(Judge):
    """A judge with pure position bias: it always prefers response A."""

    def compare(self, prompt, response_a, response_b):
        return Verdict("A")


class _Longer(Judge):
    """Prefers the longer response; equal length is a tie."""

    def compare(self, prompt, response_a, response_b):
        if len(response_a) == len(response_b):
            return Verdict("tie")
        return Verdict("A" if len(response_a) > len(response_b) else "B")


def test_position_bias_cancels_to_all_ties():
    pairs = judge_pairs(_AlwaysFirst(), ["p1", "p2"], ["long answer", "x"], ["y", "long answer"])
    assert [p.score for p in pairs] == [0.5, 0.5]
    assert not any(p.consistent for p in pairs)
    report = win_rate_report([p.score for p in pairs], [1, 1], [1, 1])
    assert (report.wins, report.ties, report.losses, report.tie_rate) == (0, 2, 0, 1.0)
    assert report.win_rate.estimate == 0.5


def test_judge_pairs_orders_and_scores():
    pairs = judge_pairs(_Longer(), ["p1", "p2", "p3"], ["long answer", "x", "same"], ["y", "long answer", "SAME"])
    assert [p.score for p in pairs] == [1.0, 0.0, 0.5]
    assert pairs[2].consistent  # an explicit tie in both orders is consistent
    with pytest.raises(ValueError, match="as many responses as prompts"):
        judge_pairs(_Longer(), ["p"], ["a", "b"], ["c"])


def test_all_wins_has_a_zero_width_interval_at_one():
    r = win_rate_report([1, 1, 1, 1, 1], [9, 9, 9, 9, 9], [3, 3, 3, 3, 3])
    assert (r.wins, r.ties, r.losses) == (5, 0, 0)
    assert tuple(r.win_rate) == (1.0, 1.0, 1.0)
    assert tuple(r.length_controlled) == (1.0, 1.0, 1.0)
    assert r.length.policy_longer_fraction == 1.0 and r.length.policy_mean == 9.0


def test_all_ties_is_one_half_exactly():
    r = win_rate_report([0.5] * 6, [1, 2, 3, 4, 5, 6], [3] * 6)
    assert tuple(r.win_rate) == (0.5, 0.5, 0.5)
    assert r.tie_rate == 1.0
    assert r.length_controlled.estimate == pytest.approx(0.5, abs=1e-9)
    assert r.length_slope == pytest.approx(0.0, abs=1e-9)


def test_interval_brackets_the_estimate_and_matches_the_bootstrap_by_hand():
    scores = [1, 1, 1, 0, 0.5, 1, 0, 1, 1, 0.5]
    r = win_rate_report(scores, [5] * 10, [5] * 10, seed=3)
    assert r.win_rate.estimate == pytest.approx(0.7)
    assert r.win_rate.low < 0.7 < r.win_rate.high
    # The same percentile bootstrap written out: resample pairs, take the 2.5% and 97.5% quantiles.
    idx = np.random.default_rng(3).integers(0, 10, size=(1000, 10))
    means = np.asarray(scores, dtype=float)[idx].mean(-1)
    assert r.win_rate.low == pytest.approx(np.quantile(means, 0.025))
    assert r.win_rate.high == pytest.approx(np.quantile(means, 0.975))


def test_no_length_difference_means_the_plain_win_rate():
    scores = [1, 0, 1, 0.5, 1, 1, 0, 0.5]
    lc, slope = length_controlled_win_rate(scores, [4] * 8, [4] * 8, n_resamples=50)
    assert lc.estimate == pytest.approx(np.mean(scores), abs=1e-9)
    assert slope == 0.0


def test_wins_explained_by_length_are_discounted():
    # Symmetric design: the policy wins exactly when it is longer, as often longer as shorter. The fitted
    # intercept is 0 by symmetry, so the length-controlled rate is exactly 1/2 whatever the penalty.
    lc, slope = length_controlled_win_rate([1, 1, 0, 0], [8, 8, 2, 2], [5, 5, 5, 5], n_resamples=50)
    assert lc.estimate == pytest.approx(0.5, abs=1e-9) and slope > 0
    # Mostly longer and winning when longer: the raw 0.75 overstates what equal length would give.
    r = win_rate_report([1, 1, 1, 0], [8, 8, 8, 2], [5, 5, 5, 5])
    assert r.win_rate.estimate == 0.75
    assert 0.5 < r.length_controlled.estimate < 0.75


def test_logistic_fit_matches_the_stationary_conditions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    s = (rng.random(200) < 1 / (1 + np.exp(-(0.3 + 1.2 * x)))).astype(float)
    a, b = fit_length_logistic(s[None], x[None], l2=1.0)
    p = 1 / (1 + np.exp(-(a[0] + b[0] * x)))
    assert np.sum(p - s) == pytest.approx(0.0, abs=1e-8)  # d/da = 0
    assert np.sum((p - s) * x) + 1.0 * b[0] == pytest.approx(0.0, abs=1e-8)  # d/db = 0 with the penalty


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no judged pairs"):
        win_rate_report([], [], [])
    with pytest.raises(ValueError, match="one length per pair"):
        win_rate_report([1, 0], [1], [1, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate_report([2.0], [1], [1])
