"""pass@k of one recipe over several training seeds: the mean before, after and gain with Student-t intervals.

Each seed's ``accuracy`` section (report.json) has pass@k before and after with an interval over its held-out
problems: evaluation noise for that one trained model. Across seeds, the spread of training is the
t-interval of the per-seed figures (:func:`alignkit.report.seeds.t_interval`); the gain is paired seed by
seed (after minus before of the same run), so a gain whose interval excludes 0 held up over these seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignkit.report.accuracy import format_percent
from alignkit.report.seeds import t_interval

__all__ = ["accuracy_over_seeds", "accuracy_seeds_markdown"]


def _pass_at(row: Mapping[str, Any], k: str) -> float:
    # report.json stores k as a string key; a section built in memory uses ints.
    table = row["pass_at"]
    return float((table[k] if k in table else table[int(k)])["estimate"])


def accuracy_over_seeds(sections: Mapping[int, Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Across-seed pass@k of the runs' ``accuracy`` sections, keyed by seed.

    Args:
        sections: seed -> that run's ``accuracy`` section (``before`` and ``after``, each with ``pass_at``).
        confidence: the interval's coverage.

    Returns:
        ``{"seeds": [...], "pass_at": {k: {"before", "after", "gain"}}}``, each a t-interval dict
        (``estimate``, ``low``, ``high``, ``n``, ``sd``) of fractions; ``gain`` is the per-seed difference.

    Raises:
        ValueError: no sections, or runs that measured different k.
    """
    if not sections:
        raise ValueError("accuracy over seeds: no runs with an accuracy section")
    seeds = sorted(sections)
    ks = [str(k) for k in sections[seeds[0]]["after"]["pass_at"]]
    for seed in seeds:
        if sorted(str(k) for k in sections[seed]["after"]["pass_at"]) != sorted(ks):
            raise ValueError(f"accuracy over seeds: seed {seed} measured pass@k for other k than seed {seeds[0]}")
    out: dict[str, Any] = {}
    for k in ks:
        before = [_pass_at(sections[s]["before"], k) for s in seeds]
        after = [_pass_at(sections[s]["after"], k) for s in seeds]
        out[k] = {"before": t_interval(before, confidence), "after": t_interval(after, confidence),
                  "gain": t_interval([a - b for a, b in zip(after, before, strict=True)], confidence)}
    return {"seeds": seeds, "confidence": confidence, "pass_at": out}


def _cell(entry: Mapping[str, float]) -> str:
    # One seed has no spread to measure: its bounds are NaN, so only the value is shown.
    return format_percent(entry) if entry["n"] > 1 else f"{100 * entry['estimate']:.1f}% (one seed)"


def accuracy_seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: one row per k, mean before, after and paired gain (percent)."""
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [f"pass@k over seeds {seeds}: mean with a {100 * summary['confidence']:.0f}% Student-t interval "
             "across seeds (the gain paired seed by seed)", "",
             "| k | before | after | gain |", "|---|---|---|---|"]
    for k, row in summary["pass_at"].items():
        lines.append(f"| pass@{k} | {_cell(row['before'])} | {_cell(row['after'])} | {_cell(row['gain'])} |")
    return "\n".join(lines) + "\n"

