"""The comparison table: one row per run of `alignkit compare`, in the terminal, as Markdown and as JSON.

A row is a plain dict built by :func:`comparison_row` from a run's ``report.json`` and its training
metrics; figures a run does not have (no reward evaluation, no judge) are ``None`` and shown as ``-``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from alignkit.cache import writing
from alignkit.report.format import format_interval, to_json
from alignkit.report.judge import latest_win_rate, latest_win_rate_section, unreliable_flag

__all__ = [
    "COLUMNS",
    "comparison_row",
    "find_win_rate",
    "render_comparison",
    "rows_to_markdown",
]

# (row key, column title); interval columns hold {"estimate", "low", "high"} dicts.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("label", "run"),
    ("status", "status"),
    ("heldout_accuracy", "held-out pref. acc."),
    ("heldout_margin", "held-out margin"),
    ("win_rate", "win rate vs ref. (95% CI)"),
    ("reward", "mean reward (95% CI)"),
    ("kl", "KL to ref., nats (95% CI)"),
    ("wall_seconds", "wall s"),
    ("peak_memory_mib", "peak MiB"),
    ("tokens_per_second", "tokens/s"),
)


def _interval(entry: Any) -> dict[str, float] | None:
    """``{"estimate", "low", "high"}`` from the shapes an interval takes in a report, else None."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return {"estimate": float(entry), "low": float("nan"), "high": float("nan")}
    if not isinstance(entry, dict):
        return None
    for key in ("estimate", "win_rate", "rate", "mean", "value"):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = entry.get("low", entry.get("ci_low")), entry.get("high", entry.get("ci_high"))
            ci = entry.get("ci")
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                low, high = ci
            return {"estimate": float(value),
                    "low": float(low) if low is not None else float("nan"),
                    "high": float(high) if high is not None else float("nan")}
    return None


def find_win_rate(report: dict[str, Any]) -> dict[str, float] | None:
    """The win rate in a run report (``win_rate``, else the latest judged evaluation's against the reference,
    else its first baseline's), or None."""
    found = _interval(report.get("win_rate"))
    section = latest_win_rate_section(report)
    if found is None and section is not None:
        found = _interval(section.get("win_rate")) or _interval(section)
    return found


def _training_tokens_per_second(records: Sequence[dict[str, Any]]) -> float | None:
    """Median training throughput of the preference stage (the median ignores the slow first step)."""
    values = [r["tokens_per_second"] for r in records
              if r.get("stage", "preference") == "preference" and isinstance(r.get("tokens_per_second"), (int, float))]
    return float(statistics.median(values)) if values else None


def comparison_row(
    *,
    label: str,
    loss: str,
    params: dict[str, Any],
    status: str,
    report: dict[str, Any] | None,
    metrics: Sequence[dict[str, Any]] = (),
    note: str = "",
) -> dict[str, Any]:
    """One table row from a run's report and its ``preference/metrics.jsonl`` records.

    Args:
        label: the run's name in the comparison (also its folder name), e.g. ``dpo_beta0.1``.
        loss: the registered objective name.
        params: the loss parameters that were set for this run (the swept ones).
        status: ``trained``, ``resumed``, ``reused``, ``skipped`` or ``failed``.
        report: the run's ``report.json`` contents; None for a skipped or failed run.
        metrics: the run's metrics records (training and eval lines).
        note: why a run was skipped or failed, or anything else worth a footnote.

    Returns:
        A JSON-ready dict with the keys of :data:`COLUMNS` plus ``loss``, ``params``, ``note``,
        ``reward_name``, ``reference_reward``, ``reference_kl``, ``memory_kind``, ``steps``,
        ``win_rate_baseline``, ``win_rate_flag`` (the judge's :func:`~alignkit.report.judge.unreliable_flag`)
        and ``curve`` (reward and KL along training, ``eval.every``; None without).
    """
    row: dict[str, Any] = {key: None for key, _ in COLUMNS}
    row.update(label=label, loss=loss, params=dict(params), status=status, note=note, reward_name=None,
               reference_reward=None, reference_kl=None, memory_kind=None, steps=None,
               win_rate_baseline=None, win_rate_flag="", curve=None)
    if not report:
        return row
    pref = (report.get("stages") or {}).get("preference") or {}
    after = pref.get("eval_after") or {}
    row["heldout_accuracy"] = after.get("eval/rewards/accuracies")
    row["heldout_margin"] = after.get("eval/rewards/margins")
    row["steps"] = pref.get("steps")
    rk = report.get("reward_kl")
    if rk:
        row["reward_name"] = rk.get("reward")
        row["reward"] = _interval(rk["after"]["reward"])
        row["kl"] = _interval(rk["after"]["kl"])
        row["reference_reward"] = _interval(rk["before"]["reward"])
        row["reference_kl"] = _interval(rk["before"].get("kl"))
    row["curve"] = report.get("reward_kl_curve")
    row["win_rate"] = find_win_rate(report)
    latest = latest_win_rate(report)
    row["win_rate_baseline"] = latest[1].get("baseline") if latest is not None else None
    row["win_rate_flag"] = unreliable_flag(latest[0]) if latest is not None else ""
    row["wall_seconds"] = report.get("wall_seconds")
    if report.get("peak_cuda_mib") is not None:
        row["peak_memory_mib"], row["memory_kind"] = report["peak_cuda_mib"], "cuda"
    elif report.get("peak_rss_mib") is not None:
        row["peak_memory_mib"], row["memory_kind"] = report["peak_rss_mib"], "rss"
    row["tokens_per_second"] = _training_tokens_per_second(metrics)
    if row["tokens_per_second"] is None:  # no metrics file: the report's last training metrics
        row["tokens_per_second"] = (pref.get("last_train_metrics") or {}).get("tokens_per_second")
    return row


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return format_interval(value)
    if key in ("wall_seconds", "peak_memory_mib", "tokens_per_second"):
        return f"{value:,.0f}" if key != "wall_seconds" else f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table_cells(row: dict[str, Any]) -> list[str]:
    cells = [_cell(key, row.get(key)) for key, _ in COLUMNS]
    baseline = row.get("win_rate_baseline")
    if row.get("win_rate") and baseline not in (None, "reference"):
        index = [key for key, _ in COLUMNS].index("win_rate")
        cells[index] += f" (vs {baseline})"  # the judge compared against another baseline
    if row.get("win_rate") and row.get("win_rate_flag"):  # never a win rate of an unreliable judge without it
        cells[[key for key, _ in COLUMNS].index("win_rate")] += f" ({row['win_rate_flag']})"
    return cells


def _notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [f"- `{r['label']}` ({r['status']}): {r['note']}" for r in rows if r.get("note")]


def rows_to_markdown(rows: Sequence[dict[str, Any]], *, title: str, facts: Sequence[str] = ()) -> str:
    """The comparison as a Markdown document: title, facts (bullet lines), table, notes."""
    header = [title for _, title in COLUMNS]
    lines = [f"# {title}", ""] if title else []
    lines += list(facts) + ([""] if facts else [])
    if rows:  # none in a comparison of online runs alone: their own section follows
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _table_cells(row)) + " |" for row in rows]
    notes = _notes(rows)
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def render_comparison(
    rows: Sequence[dict[str, Any]],
    *,
    console: Console,
    title: str,
    facts: Sequence[str] = (),
    markdown_path: Path | None = None,
    json_path: Path | None = None,
    extra_json: dict[str, Any] | None = None,
) -> str:
    """Print the comparison table; write it as Markdown and JSON when paths are given; return the Markdown."""
    table = Table(title=title)
    for key, name in COLUMNS:
        table.add_column(name, justify="left" if key in ("label", "status") else "right", overflow="fold")
    for row in rows:
        table.add_row(*_table_cells(row))
    if rows:
        console.print(table)
    for line in [*facts, *_notes(rows)]:
        console.print(line, markup=False, highlight=False)
    text = rows_to_markdown(rows, title=title, facts=facts)
    if markdown_path is not None:
        with writing(markdown_path) as f:
            f.write(text)
    if json_path is not None:
        payload = {**(extra_json or {}), "rows": list(rows)}
        with writing(json_path) as f:
            f.write(to_json(payload))
    return text
