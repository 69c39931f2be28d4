"""PNG plots of an evaluation: the win rate with its interval, and reward versus KL.

matplotlib runs with the Agg backend (no display needed); each function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.cache import writing
from alignkit.report.format import bound, format_interval

__all__ = ["interval_error", "plot_reward_kl", "plot_win_rate", "pyplot", "save_figure", "win_rate_figure"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def interval_error(entry: Mapping[str, Any]) -> list[list[float]]:
    """Asymmetric error-bar lengths ([[below], [above]]) of an interval; 0 where it has no bound."""
    low, high, est = bound(entry, "low"), bound(entry, "high"), float(entry["estimate"])
    below = est - low if low is not None else 0.0
    above = high - est if high is not None else 0.0
    return [[max(below, 0.0)], [max(above, 0.0)]]


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and release it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def _win_rate_rows(evaluations: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = []
    for evaluation in evaluations:
        name = (evaluation.get("judge") or {}).get("name", "judge")
        for section in evaluation.get("baselines") or []:
            who = f"vs {section.get('baseline')} (#{evaluation.get('evaluation', 1)} {name}, n={section.get('n')})"
            if section.get("win_rate"):
                rows.append((who, section["win_rate"]))
            if section.get("length_controlled_win_rate"):
                rows.append(("  length-controlled", section["length_controlled_win_rate"]))
    return rows


def win_rate_figure(evaluations: Sequence[Mapping[str, Any]]) -> tuple[Any, Any, list[Any]]:
    """The figure of :func:`plot_win_rate`, not yet saved: (figure, axes, the value labels).

    The value labels sit in a column right of the 0-1 axis, where no bar or interval can reach them (a label
    placed after each interval runs into the next one's or off the axis near a win rate of 1).
    """
    plt = pyplot()
    rows = _win_rate_rows(evaluations)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * max(len(rows), 1)))
    labels = []
    for y, (_label, ci) in enumerate(rows):
        est = ci["estimate"]
        ax.barh(y, est, color="tab:blue", alpha=0.6, height=0.5)
        ax.errorbar(est, y, xerr=interval_error(ci), fmt="o", color="black", capsize=4)
        # x in axes fraction (just past the right spine), y in data: one column of labels beside the plot.
        labels.append(ax.text(1.02, y, format_interval(ci, 2), va="center", ha="left", fontsize=8,
                              transform=ax.get_yaxis_transform()))
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()  # the first evaluation on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("policy win rate (95% CI)")
    fig.tight_layout()
    return fig, ax, labels


def plot_win_rate(evaluations: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Horizontal bars of each baseline's win rate and length-controlled win rate with their 95% intervals,
    each row's interval printed in a column to the right of the plot.

    Args:
        evaluations: report.json's judged evaluations (:func:`alignkit.report.judge.judged_evaluations`).
        path: PNG file to write.
    """
    fig, _, _ = win_rate_figure(evaluations)
    return save_figure(fig, path)


def plot_reward_kl(reward_kl: dict[str, Any], path: str | Path) -> Path:
    """Mean reward against KL(policy || reference) for the reference and the policy, with 95% intervals.

    Args:
        reward_kl: the ``reward_kl`` section of report.json (:func:`alignkit.eval.before_after.evaluate_before_after`).
        path: PNG file to write.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, color in (("before", "tab:gray"), ("after", "tab:red")):
        entry = reward_kl[key]
        r, k = entry["reward"], entry["kl"]
        ax.errorbar(k["estimate"], r["estimate"],
                    xerr=interval_error(k), yerr=interval_error(r),
                    fmt="o", color=color, capsize=4, label=entry.get("label", key))
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel(f"mean reward ({reward_kl.get('reward', '')})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
