"""A win rate from a judge its own checks flag is never shown without the flag in the same cell: report.md,
the terminal table and the comparison table."""

from __future__ import annotations

import io
import re

from rich.console import Console

from alignkit.eval.position_bias import PositionBias, judge_warnings
from alignkit.eval.stats import Interval
from alignkit.report.compare_table import comparison_row, render_comparison
from alignkit.report.judge import judge_markdown, unreliable_flag
from alignkit.report.tables import render_report

WIN_RATE = {"estimate": 0.667, "low": 0.417, "high": 0.917}
ALWAYS_A = PositionBias(pairs=12, verdicts=24, flip_rate=1.0, first_position_rate=1.0, same_verdict_rate=1.0,
                        most_common="A")
FAIR = PositionBias(pairs=12, verdicts=24, flip_rate=0.1, first_position_rate=0.5, same_verdict_rate=0.5,
                    most_common="A")


def _report(bias: PositionBias, agreement: Interval | None = None) -> dict:
    warnings = judge_warnings(bias, max_flip_rate=0.3, max_same_verdict_rate=0.9, agreement=agreement)
    section = {"baseline": "chosen", "n": 12, "win_rate": WIN_RATE, "wins": 8, "ties": 0, "losses": 4}
    return {"recipe": "r", "objective": "dpo", "judged": [
        {"evaluation": 1, "judge": {"name": "local"}, "baselines": [section], "warnings": warnings,
         "position_bias": bias.to_dict(), "agreement": None, "agreement_note": "not measured"}]}


def _cells_with_the_win_rate(text: str) -> list[str]:
    """Every table cell (Markdown `|` or the terminal's box-drawing `│`) that holds the win rate."""
    cells = re.split(r"[|│┃]", text)
    return [c for c in cells if "0.667" in c]


def _render(report: dict) -> tuple[str, str]:
    out = io.StringIO()
    markdown = render_report(report, console=Console(file=out, width=400)) + "\n" + judge_markdown(report)
    return markdown, out.getvalue()


def test_every_cell_with_a_flagged_judges_win_rate_carries_the_flag():
    report = _report(ALWAYS_A, agreement=Interval(0.5, 0.3, 0.7))
    flag = unreliable_flag(report["judged"][0])
    assert flag == ("UNRELIABLE judge: near-constant verdicts, position-biased, chance-level agreement with the "
                    "labels")
    markdown, terminal = _render(report)
    for text in (markdown, terminal):
        cells = _cells_with_the_win_rate(text)
        assert cells and all("UNRELIABLE judge" in c for c in cells), cells

    out = io.StringIO()
    row = comparison_row(label="dpo", loss="dpo", params={}, status="trained", report=report)
    compare_md = render_comparison([row], console=Console(file=out, width=400), title="t")
    for text in (compare_md, out.getvalue()):
        cells = _cells_with_the_win_rate(text)
        assert cells and all("UNRELIABLE judge" in c for c in cells), cells


def test_a_judge_that_passes_its_checks_shows_the_win_rate_alone():
    report = _report(FAIR)
    assert unreliable_flag(report["judged"][0]) == ""
    markdown, terminal = _render(report)
    assert "UNRELIABLE" not in markdown + terminal and _cells_with_the_win_rate(markdown)
