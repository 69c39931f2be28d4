"""Accuracy of verifiable tasks in words: pass@k before and after training, with 95% intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["accuracy_comparison", "accuracy_lines", "accuracy_markdown", "format_percent"]


def format_percent(entry: Mapping[str, float]) -> str:
    """``12.0% [8.1, 15.9]`` of an interval dict of fractions."""
    return f"{100 * entry['estimate']:.1f}% [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def accuracy_lines(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """One line per k: ``pass@k: 12.0% [8.1, 15.9] -> 20.5% [15.7, 25.3]``."""
    return [f"pass@{k}: {format_percent(before['pass_at'][k])} -> {format_percent(after['pass_at'][k])}"
            for k in after["pass_at"]]


def accuracy_markdown(section: Mapping[str, Any]) -> str:
    """The report.md section of ``accuracy``: one row per model, one column per pass@k."""
    ks = list(section["after"]["pass_at"])
    before = section["before"]
    lines = ["", f"## Accuracy ({section['reward']}; {before['problems']} held-out problems, "
             f"{before['samples_per_problem']} samples each; 95% intervals)", "",
             "| model | " + " | ".join(f"pass@{k}" for k in ks) + " | mean length (tokens) |",
             "|---" * (len(ks) + 2) + "|"]
    for key in ("before", "after"):
        row = section[key]
        lines.append(f"| {row['label']} | " + " | ".join(format_percent(row["pass_at"][k]) for k in ks)
                     + f" | {row['mean_length']:.1f} |")
    return "\n".join(lines) + "\n"


def accuracy_comparison(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The ``compare`` section of runs that measured accuracy: per run, each pass@k before -> after."""
    lines = ["", "### Accuracy on held-out problems (95% intervals)", "",
             "| run | reward | problems x samples | pass@k: before -> after |", "|---|---|---|---|"]
    for name, section in runs:
        before = section["before"]
        lines.append(f"| {name} | {section['reward']} | {before['problems']} x {before['samples_per_problem']} | "
                     + "; ".join(accuracy_lines(before, section["after"])) + " |")
    return "\n".join(lines) + "\n"
