"""The judged win rate in the report: table rows and the Markdown section (from report.json's ``judge``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.report.format import format_interval

__all__ = ["judge_markdown", "judge_report_rows"]


def judge_report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows of (metric, before, after) for the report table from report.json's ``judge`` section."""
    judge = report.get("judge")
    if not judge:
        return []
    who = f"{judge['judge'].get('name', 'judge')} judge"
    # judge_run never writes a section without a win rate; an edited or foreign report.json may lack one.
    win_rate = format_interval(judge["win_rate"]) if judge.get("win_rate") else "none (no valid verdict)"
    rows = [
        [f"win rate vs {judge['baseline']} ({who}, 95% CI)", "0.500", win_rate],
        ["length-controlled win rate (95% CI)", "", format_interval(judge.get("length_controlled_win_rate"))],
        ["wins / ties / losses", "", f"{judge['wins']} / {judge['ties']} / {judge['losses']}"],
    ]
    if judge.get("invalid_verdicts"):
        rows.append(["invalid verdicts (counted as ties)", "", f"{judge['invalid_verdicts']} of {2 * judge['n']}"])
    length = judge["length"]
    rows.append([f"mean judged response {length['unit']} (baseline / policy)", "",
                 f"{length['baseline_mean']:.1f} / {length['policy_mean']:.1f}"])
    return rows


def judge_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """A Markdown section describing the judge, its figures and plots (to append to report.md)."""
    judge = report.get("judge")
    lines = []
    if judge:
        desc = ", ".join(f"{k}={v}" for k, v in judge["judge"].items())
        lines += [
            "## Judged win rate", "",
            f"Policy versus {judge['baseline']} on {judge['n']} held-out prompts, each pair judged in both orders "
            f"(disagreement = tie). Judge: {desc}.", "",
            "| metric | value |", "|---|---|",
            *[f"| {row[0]} | {row[2]} |" for row in judge_report_rows(report)],
            f"| order consistency | {judge['order_consistency']:.3f} |", "",
        ]
    if plots:
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({p})" for p in plots], ""]
    return "\n".join(lines)
