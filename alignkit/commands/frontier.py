"""`alignkit frontier`: online runs (and offline comparisons) on one reward-vs-KL plot.

`alignkit compare` draws its own ``frontier.png`` through :func:`draw_frontier` from the ``comparison.json`` it
has just written, so ``alignkit frontier --comparison`` on that file draws the same points (every seed's,
the mean over seeds with its interval, offline and online), whatever it adds beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignkit.report.frontier import plot_online_frontier, rows_from_comparison

__all__ = ["draw_frontier"]


def draw_frontier(run_dirs: Sequence[str | Path], comparisons: Sequence[str | Path], out: str | Path,
                  title: str = "", data: str | Path | None = None) -> Path | None:
    """Plot the runs' and comparisons' points to ``out`` (and the plotted figures as JSON to ``data``, when
    given); None when no run has a reward and a KL (nothing is written then)."""
    extra = [row for path in comparisons for row in rows_from_comparison(path)]
    return plot_online_frontier(list(run_dirs), Path(out), extra_rows=extra, title=title,
                                data_path=Path(data) if data is not None else None)
