"""Online runs on the reward-versus-KL plot, next to the offline objectives (the DPO paper's Figure 2).

Rows follow :func:`alignkit.report.compare_table.comparison_row`'s keys that
:func:`alignkit.report.compare_plots.plot_frontier` reads (``loss``, ``params``, ``reward``, ``kl`` as
``{estimate, low, high}``), so an RLOO run is a point (runs with different beta form a trajectory) and a
WARP front is a curve over eta. KL is in nats per completion (sequence sum), to the initial model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.report.compare_plots import plot_frontier
from alignkit.report.format import format_interval

__all__ = ["front_markdown", "online_frontier_rows", "plot_online_frontier", "rows_from_comparison"]


def _row(label: str, loss: str, params: dict[str, Any], reward: dict, kl: dict, reward_name: str | None,
         before: dict | None) -> dict[str, Any]:
    return {"label": label, "loss": loss, "params": params, "reward": reward, "kl": kl, "reward_name": reward_name,
            "reference_reward": before.get("reward") if before else None,
            "reference_kl": before.get("kl") if before else None}


def online_frontier_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Frontier rows of online run folders (their ``report.json``): one per run (labelled by its algorithm,
    ``rloo``, ``reinforce``, ``ppo`` or ``grpo``), one per WARP eta.

    Raises:
        FileNotFoundError: a folder without ``report.json``.
    """
    rows: list[dict[str, Any]] = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no report.json (has the run finished?)")
        report = json.loads(path.read_text())
        rk = report.get("reward_kl") or {}
        before = rk.get("before")
        beta = (report.get("online") or {}).get("beta")
        if report.get("warp_front"):
            for point in report["warp_front"]:
                rows.append(_row(f"{run_dir.name}_eta{point['eta']:g}", "warp front", {"eta": point["eta"]},
                                 point["reward"], point["kl"], point.get("reward_name"), before))
        elif rk:
            method = report.get("method") or "rloo"  # rloo, reinforce, ppo or grpo (older reports: rloo)
            rows.append(_row(run_dir.name, method, {"beta": beta}, rk["after"]["reward"], rk["after"]["kl"],
                             rk.get("reward"), before))
    return rows


def rows_from_comparison(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an ``alignkit compare`` folder's ``comparison.json`` (the offline objectives)."""
    return list(json.loads(Path(path).read_text())["rows"])


def plot_online_frontier(run_dirs: Sequence[str | Path], path: Path, *, title: str = "",
                         extra_rows: Sequence[dict[str, Any]] = ()) -> Path | None:
    """Plot online runs (and ``extra_rows``, e.g. from :func:`rows_from_comparison`) on one frontier PNG."""
    rows = [*extra_rows, *online_frontier_rows(run_dirs)]
    return plot_frontier(rows, path, title=title or "reward vs KL to the initial model")


def front_markdown(report: dict[str, Any]) -> str:
    """The WARP front of a report as a Markdown table (eta, reward, KL with 95% intervals)."""
    lines = ["", "## WARP front: (1 - eta) theta_sft + eta theta_final", "",
             "| eta | mean reward (95% CI) | KL to the initial model, nats (95% CI) | tokens |", "|---|---|---|---|"]
    for p in report.get("warp_front", []):
        r, k = p["reward"], p["kl"]
        lines.append(f"| {p['eta']:g} | {format_interval(r)} | {format_interval(k, 2)} | {p['mean_length']:.1f} |")
    return "\n".join(lines) + "\n"
