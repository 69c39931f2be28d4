"""Judging reports its progress: comparisons done of the total, as the judge gets through them, on a bar
with the count, the rate and the time left."""

from __future__ import annotations

import io

from rich.console import Console

from alignkit.eval.judges import judge_pairs
from alignkit.eval.judges.base import Judge, Verdict
from alignkit.eval.judges.local import LocalJudge
from alignkit.progress import StepProgress

PROMPTS = ["Say hi.", "Name a colour.", "Count to two."]
POLICY = ["Hi!", "Blue.", "One, two."]
BASELINE = ["Hello there.", "Red.", "1 2"]


class _FirstJudge(Judge):
    """Always "A", one comparison at a time (the base class's compare_many)."""

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return Verdict("A")


class _NoProgressJudge(_FirstJudge):
    """A judge (as a plugin may write one) whose compare_many takes no progress callback."""

    def compare_many(self, items):  # type: ignore[override]
        return [self.compare(*item) for item in items]


def test_local_judge_reports_after_each_batch(tiny_gpt2, gpt2_tokenizer):
    calls: list[tuple[int, int]] = []
    judge_pairs(LocalJudge(tiny_gpt2, gpt2_tokenizer, batch_size=2), PROMPTS, POLICY, BASELINE,
                progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 6), (4, 6), (6, 6)]


def test_one_at_a_time_judges_report_each_comparison_and_others_once_at_the_end():
    calls: list[tuple[int, int]] = []
    judge_pairs(_FirstJudge(), PROMPTS, POLICY, BASELINE, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]
    calls.clear()
    judge_pairs(_NoProgressJudge(), PROMPTS, POLICY, BASELINE, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(6, 6)]


def test_the_bar_shows_the_count_the_rate_and_the_time_left():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with StepProgress(console, "judge vs base", 6, unit="comparisons") as bar:
        judge_pairs(_FirstJudge(), PROMPTS, POLICY, BASELINE, progress=bar.update)
    text = out.getvalue()
    assert "judge vs base" in text and "6/6" in text and "comparisons/s" in text and "0:00:00" in text


def test_off_a_terminal_judging_prints_plain_lines_and_no_bar():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with StepProgress(console, "judge vs base", 6, unit="comparisons") as bar:
        judge_pairs(_FirstJudge(), PROMPTS, POLICY, BASELINE, progress=bar.update)
    text = out.getvalue()
    assert "judge vs base: 6/6" in text and "━" not in text and "\r" not in text
