"""Online runs on the reward-versus-KL plot, next to the offline objectives (the DPO paper's Figure 2).

Rows follow :func:`alignkit.report.compare_table.comparison_row`'s keys that
:func:`alignkit.report.compare_plots.plot_frontier` reads (``loss``, ``params``, ``reward``, ``kl`` as
``{estimate, low, high}``), so an RLOO run is a point (runs with different beta form a trajectory) and a
WARP front is a curve over eta. KL is in nats per completion (sequence sum), to the initial model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.jsonio import RunFileError, read_json, read_jsonl
from alignkit.report.compare_plots import plot_frontier
from alignkit.report.format import format_interval
from alignkit.report.plots import pyplot, save_figure

__all__ = [
    "front_markdown",
    "online_frontier_rows",
    "plot_online_frontier",
    "plot_proxy_vs_true",
    "proxy_true_markdown",
    "proxy_true_series",
    "running_mean",
    "rows_from_comparison",
]


def _row(label: str, loss: str, params: dict[str, Any], reward: dict, kl: dict, reward_name: str | None,
         before: dict | None) -> dict[str, Any]:
    return {"label": label, "loss": loss, "params": params, "reward": reward, "kl": kl, "reward_name": reward_name,
            "reference_reward": before.get("reward") if before else None,
            "reference_kl": before.get("kl") if before else None}


def _kl_setting(online: dict[str, Any]) -> dict[str, Any]:
    """What weighs the run's KL term, for its table cell and plot label: ``{"beta": b}`` (``online.kl.coef``
    when set, else ``online.beta``), or ``{"kl": "none"}`` for a run without a KL term (dapo, gspo, cispo,
    gmpo), whose ``online.beta`` weighs nothing. Reports from before the parts existed hold only ``beta``."""
    kl = online.get("kl") or {}
    if kl.get("placement") == "none":
        return {"kl": "none"}
    coef = kl.get("coef")
    return {"beta": coef if coef is not None else online.get("beta")}


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
        report = read_json(path, what="a run's report")
        rk = report.get("reward_kl") or {}
        before = rk.get("before")
        kl_setting = _kl_setting(report.get("online") or {})
        if report.get("warp_front"):
            for point in report["warp_front"]:
                rows.append(_row(f"{run_dir.name}_eta{point['eta']:g}", "warp front", {"eta": point["eta"]},
                                 point["reward"], point["kl"], point.get("reward_name"), before))
        elif rk:
            method = report.get("method") or "rloo"  # rloo, reinforce, ppo or grpo (older reports: rloo)
            rows.append(_row(run_dir.name, method, kl_setting, rk["after"]["reward"], rk["after"]["kl"],
                             rk.get("reward"), before))
    return rows


def rows_from_comparison(path: str | Path) -> list[dict[str, Any]]:
    """Every row an ``alignkit compare`` folder's ``comparison.json`` holds: the offline runs (``rows``) then
    the online ones (``online_rows``), each seed's row of a ``--seeds`` comparison included, so that a
    frontier drawn from them is the one ``compare`` drew (which draws from this file).

    Raises:
        RunFileError: the file is not a comparison (not strict JSON, or ``rows`` or ``online_rows`` is not a
            list of row objects).
    """
    payload = read_json(path, what="a comparison")
    rows: list[dict[str, Any]] = []
    for key, required in (("rows", True), ("online_rows", False)):
        part = payload.get(key, None if required else [])
        if not isinstance(part, list) or not all(isinstance(row, dict) for row in part):
            raise RunFileError(f"{path}: not a comparison: {key!r} is not a list of objects")
        rows += part
    return rows


def plot_online_frontier(run_dirs: Sequence[str | Path], path: Path, *, title: str = "",
                         extra_rows: Sequence[dict[str, Any]] = (), data_path: Path | None = None) -> Path | None:
    """Plot online runs (and ``extra_rows``, e.g. from :func:`rows_from_comparison`) on one frontier PNG,
    and its figures as JSON to ``data_path`` when given (see :func:`~alignkit.report.compare_plots.plot_frontier`)."""
    rows = [*extra_rows, *online_frontier_rows(run_dirs)]
    return plot_frontier(rows, path, title=title or "reward vs KL to the initial model", data_path=data_path)


def front_markdown(report: dict[str, Any]) -> str:
    """The WARP front of a report as a Markdown table (eta, reward, KL with 95% intervals)."""
    lines = ["", "## WARP front: (1 - eta) theta_sft + eta theta_final", "",
             "| eta | mean reward (95% CI) | KL to the initial model, nats (95% CI) | tokens |", "|---|---|---|---|"]
    for p in report.get("warp_front", []):
        r, k = p["reward"], p["kl"]
        lines.append(f"| {p['eta']:g} | {format_interval(r)} | {format_interval(k, 2)} | {p['mean_length']:.1f} |")
    return "\n".join(lines) + "\n"


def proxy_true_markdown(section: dict[str, Any], plot: str | None) -> str:
    """The report.md section of ``proxy_vs_true``: proxy and true reward before and after, with the plot."""
    lines = ["", f"## Proxy vs true reward ({section['true_reward_name']} measured, not trained on)", "",
             "| model | proxy reward (95% CI) | true reward (95% CI) | KL to the initial model, nats (95% CI) |",
             "|---|---|---|---|"]
    for key in ("before", "after"):
        row = section[key]
        lines.append(f"| {row['label']} | {format_interval(row['proxy_reward'])} | "
                     f"{format_interval(row['true_reward'])} | {format_interval(row['kl'], 2)} |")
    if plot:
        lines += ["", f"![proxy vs true reward against KL]({plot})"]
    return "\n".join(lines) + "\n"


def proxy_true_series(metrics: str | Path) -> dict[str, list[float]]:
    """``{kl, reward, true_reward}`` per logged update of an online run, in step order.

    Args:
        metrics: a ``metrics.jsonl`` file, or a run folder (its ``online/metrics.jsonl``).

    Raises:
        FileNotFoundError: no metrics file there.
        ValueError: no record has ``kl``, ``reward`` and ``true_reward`` (a run without ``online.true_reward``).
    """
    path = Path(metrics)
    if path.is_dir():
        path = path / "online" / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{metrics}: no metrics.jsonl (an online run folder or its metrics file)")
    records = read_jsonl(path, what="a metrics record")
    keep = sorted((r for r in records if all(k in r for k in ("kl", "reward", "true_reward"))),
                  key=lambda r: r.get("step", 0))
    if not keep:
        raise ValueError(f"{path}: no record with kl, reward and true_reward (was online.true_reward set?)")
    return {key: [float(r[key]) for r in keep] for key in ("kl", "reward", "true_reward")}


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each full window of ``window`` consecutive values (``len - window + 1`` of them)."""
    if not 1 <= window <= len(values):
        raise ValueError(f"window {window} must be between 1 and the number of values ({len(values)})")
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]


def plot_proxy_vs_true(runs: Sequence[str | Path], path: Path, *, labels: Sequence[str] | None = None,
                       title: str = "") -> Path:
    """Proxy (trained-on) reward and true reward against KL to the initial model, one colour per run.

    The proxy is drawn solid (dots) and the true reward dashed (crosses), each against the KL logged on the
    same update: faint points per update, lines through running means over an eighth of the updates, so a proxy that keeps rising while the true reward flattens or falls as KL grows
    (reward over-optimisation, Gao et al. 2022) shows. The two rewards may have different scales (a reward
    model's scores against VADER's [-1, 1]), so each has its own axis: proxy on the left, true on the right.

    Args:
        runs: online run folders or their ``metrics.jsonl`` files (see :func:`proxy_true_series`).
        path: the PNG file to write.
        labels: one per run; default the run folder's name.
    """
    plt = pyplot()
    fig, left = plt.subplots(figsize=(7, 4.5))
    right = left.twinx()
    cmap = plt.get_cmap("tab10")
    names = list(labels) if labels is not None else [
        (Path(r).parent.parent.name if Path(r).is_file() else Path(r).name) for r in runs]
    for i, (run, name) in enumerate(zip(runs, names, strict=True)):
        series, colour = proxy_true_series(run), cmap(i % 10)
        # Each update's batch is noisy and its KL is not monotone in the step: the updates are drawn as faint
        # points and the trend as running means over a window of updates (KL and rewards averaged alike).
        left.scatter(series["kl"], series["reward"], color=colour, marker="o", s=9, alpha=0.3)
        right.scatter(series["kl"], series["true_reward"], color=colour, marker="x", s=12, alpha=0.3)
        window = max(1, len(series["kl"]) // 8)
        kl = running_mean(series["kl"], window)
        left.plot(kl, running_mean(series["reward"], window), "-", color=colour, label=f"{name}: proxy")
        right.plot(kl, running_mean(series["true_reward"], window), "--", color=colour, label=f"{name}: true")
    left.set_xlabel("KL to the initial model (nats per completion)")
    left.set_ylabel("proxy reward (trained on), solid")
    right.set_ylabel("true reward (measured only), dashed")
    handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
    left.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="best")
    left.set_title(title or "proxy vs true reward as KL grows")
    left.grid(alpha=0.3)
    return save_figure(fig, path)
