"""pass@k: the unbiased estimator worked by hand, its interval, and the report's words."""

from __future__ import annotations

import pytest

from alignkit.eval.accuracy import pass_at_k, pass_at_k_interval
from alignkit.report.accuracy import accuracy_comparison, accuracy_lines, accuracy_markdown


def test_pass_at_k_hand_worked():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples: some k-subset always holds a right one
    for bad in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*bad)


def test_pass_at_1_is_the_mean_accuracy_and_its_interval_is_clipped():
    ci = pass_at_k_interval([0, 0, 0, 1], n=4, k=1)  # per-problem accuracies 0, 0, 0, 0.25
    assert ci.estimate == pytest.approx(0.0625) and ci.low == 0.0 and ci.high > ci.estimate
    assert pass_at_k_interval([4, 4], n=4, k=2).to_dict() == {"estimate": 1.0, "low": 1.0, "high": 1.0}


def test_accuracy_words():
    row = {"label": "initial", "problems": 2, "samples_per_problem": 4, "mean_length": 5.0,
           "pass_at": {"1": {"estimate": 0.125, "low": 0.0, "high": 0.3}}}
    after = {**row, "label": "policy", "pass_at": {"1": {"estimate": 0.5, "low": 0.25, "high": 0.75}}}
    assert accuracy_lines(row, after) == ["pass@1: 12.5% [0.0, 30.0] -> 50.0% [25.0, 75.0]"]
    section = {"reward": "exact_match", "before": row, "after": after}
    assert "| policy | 50.0% [25.0, 75.0] | 5.0 |" in accuracy_markdown(section)
    assert "| run1 | exact_match | 2 x 4 | pass@1: 12.5%" in accuracy_comparison([("run1", section)])


def test_compare_shows_each_online_runs_accuracy(tmp_path):
    from alignkit.commands.compare_online import OnlineEntry, online_markdown

    row = {"label": "initial", "problems": 3, "samples_per_problem": 2, "mean_length": 4.0,
           "pass_at": {"1": {"estimate": 0.5, "low": 0.1, "high": 0.9}}}
    section = {"reward": "reasoning_gym", "before": row, "after": row}
    text = online_markdown([OnlineEntry(tmp_path / "grpo_run", None, "reused", rows=[], accuracy=section),
                            OnlineEntry(tmp_path / "sentiment_run", None, "reused", rows=[])], None)
    assert "| grpo_run | reasoning_gym | 3 x 2 | pass@1: 50.0% [10.0, 90.0] -> 50.0% [10.0, 90.0] |" in text
    assert "sentiment_run |" not in text.split("### Accuracy")[1]  # a run without accuracy has no row
