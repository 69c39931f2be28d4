"""`alignkit frontier`: online runs (and offline comparisons) on one reward-vs-KL plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignkit.report.frontier import plot_online_frontier, rows_from_comparison

__all__ = ["draw_frontier"]


def draw_frontier(run_dirs: Sequence[str], comparisons: Sequence[str], out: str | Path, title: str = "") -> Path | None:
    """Plot the runs' and comparisons' points to ``out``; None when no run has a reward and a KL."""
    extra = [row for path in comparisons for row in rows_from_comparison(path)]
    return plot_online_frontier(list(run_dirs), Path(out), extra_rows=extra, title=title)
