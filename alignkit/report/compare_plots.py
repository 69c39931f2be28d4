"""Plots of a comparison (PNG, matplotlib's Agg backend so no display is needed).

- The reward-versus-KL frontier (the protocol of the DPO paper's Figure 2): one colour per objective,
  one point per swept value joined by a line, 95% intervals as error bars on both axes, and the reference
  model as a black star. Runs over several seeds: every seed's point faint and small, the method's mean
  over the seeds with its 95% interval across seeds (Student t) as the error bars. A run evaluated along
  training (``eval.every``) adds its curve: a thin line from the reference through each evaluated step.
- Training curves: loss, reward margin and reward accuracy against the optimizer step, one line per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.cache import writing
from alignkit.report.format import to_json
from alignkit.report.plots import interval_error, pyplot, save_figure
from alignkit.report.seeds import seed_summary

plt = pyplot()  # Agg backend: render to files only

__all__ = ["frontier_layout", "plot_frontier", "plot_training_curves"]

_LINESTYLES = ("-", "--", ":", "-.")


def _colours(losses: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {loss: cmap(i % 10) for i, loss in enumerate(dict.fromkeys(losses))}


def _sort_key(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, float(v) if isinstance(v, (int, float)) else 0.0) for k, v in row["params"].items()))


def _param_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _point(row: dict[str, Any]) -> dict[str, Any]:
    """A drawn point: where it sits (reward and KL with their intervals) and what it is."""
    keys = ("label", "group", "loss", "params", "seed", "seeds", "reward", "kl")
    return {key: row[key] for key in keys if key in row}


def frontier_layout(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What :func:`plot_frontier` draws from ``rows``, as JSON-ready data (no drawing).

    Args:
        rows: comparison rows (see :func:`alignkit.report.compare_table.comparison_row`); rows without
            ``reward`` and ``kl`` are left out. Rows with a ``seed`` are each seed's point, and their method's
            mean over seeds (:func:`alignkit.report.seeds.seed_summary`) is the point with intervals.

    Returns:
        ``{"reward_name", "reference", "seeds", "points", "curves"}``: the reference model (``reward`` and
        ``kl``, or None), every seed's point (``label``, ``group``, ``loss``, ``seed``, ``reward``, ``kl``),
        the points with error bars (a method's mean over seeds with its across-seed interval, or an unseeded
        run), and each run's curve along training (``label``, ``loss``, ``kl`` and ``reward`` lists, from the
        reference); None when no row has a reward and a KL.
    """
    evaluated = [r for r in rows if r.get("reward") and r.get("kl")]
    seeded = [r for r in evaluated if r.get("seed") is not None]
    points = [r for r in evaluated if r.get("seed") is None]
    points += [s for s in seed_summary(seeded) if s["reward"] and s["kl"]]
    if not points:
        return None
    with_reference = next((r for r in points if r.get("reference_reward")), None)
    reference = None if with_reference is None else {
        "reward": with_reference["reference_reward"],
        "kl": with_reference.get("reference_kl") or {"estimate": 0.0, "low": None, "high": None}}
    curves = [_curve(r) for r in evaluated if r.get("curve")]
    return {"reward_name": points[0].get("reward_name") or "reward", "reference": reference,
            "seeds": [_point(r) for r in seeded], "points": [_point(r) for r in points], "curves": curves}


def _curve(row: dict[str, Any]) -> dict[str, Any]:
    """A run's reward and KL along training, from the reference model (step 0) to its last step."""
    xy = [(p["kl"]["estimate"], p["reward"]["estimate"]) for p in row["curve"]]
    if row.get("reference_reward"):
        reference_kl = row["reference_kl"]["estimate"] if row.get("reference_kl") else 0.0
        xy.insert(0, (reference_kl, row["reference_reward"]["estimate"]))
    return {"label": row["label"], "loss": row["loss"], "kl": [x for x, _ in xy], "reward": [y for _, y in xy]}


def plot_frontier(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "",
                  data_path: Path | None = None) -> Path | None:
    """Mean reward against KL to the reference, per objective and swept value.

    Args:
        rows: comparison rows, drawn as :func:`frontier_layout` lays them out.
        path: the PNG file to write.
        title: figure title.
        data_path: also write the layout there as JSON (the plot's figures as data).

    Returns:
        ``path``, or None when no row has a reward and a KL (nothing is written then).
    """
    layout = frontier_layout(rows)
    if layout is None:
        return None
    if data_path is not None:
        Path(data_path).parent.mkdir(parents=True, exist_ok=True)  # as save_figure does for the PNG
        with writing(data_path) as f:
            f.write(to_json(layout))
    points, seeds = layout["points"], layout["seeds"]
    colours = _colours([r["loss"] for r in points])
    fig, ax = plt.subplots(figsize=(7, 5))
    for loss, colour in colours.items():
        mine = [r for r in seeds if r["loss"] == loss]
        if mine:
            ax.scatter([r["kl"]["estimate"] for r in mine], [r["reward"]["estimate"] for r in mine], s=14,
                       color=colour, alpha=0.35, marker="o", label=f"{loss}: each seed")
    reference = layout["reference"]
    if reference is not None:
        ax.errorbar([reference["kl"]["estimate"]], [reference["reward"]["estimate"]],
                    yerr=interval_error(reference["reward"]), fmt="*", color="black", markersize=12,
                    capsize=3, label="reference (before training)")
    for loss, colour in colours.items():
        group = sorted((r for r in points if r["loss"] == loss), key=_sort_key)
        xs = [r["kl"]["estimate"] for r in group]
        ys = [r["reward"]["estimate"] for r in group]
        if len(group) > 1:
            ax.plot(xs, ys, "-", color=colour, alpha=0.6)
        for r, x, y in zip(group, xs, ys, strict=True):
            ax.errorbar([x], [y], xerr=interval_error(r["kl"]), yerr=interval_error(r["reward"]), fmt="o",
                        color=colour, capsize=3, label=loss if r is group[0] else None)
            if r["params"]:
                ax.annotate(_param_text(r["params"]), (x, y), textcoords="offset points", xytext=(5, 5),
                            fontsize=7, color=colour)
    for curve in layout["curves"]:  # each run along training, from the reference model to its last step
        ax.plot(curve["kl"], curve["reward"], ".-", color=colours[curve["loss"]], alpha=0.45, linewidth=1,
                markersize=4)
    ax.set_xlabel("KL(policy || reference), nats per completion")
    ax.set_ylabel(f"mean reward ({layout['reward_name']})")
    ax.set_title(title or "reward vs KL frontier (95% intervals)")
    if seeds:
        fig.text(0.01, 0.01, "faint: each seed; solid: mean over seeds, 95% interval across seeds", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


_CURVES = (
    ("loss", "eval/loss", "loss"),
    ("rewards/margins", "eval/rewards/margins", "reward margin"),
    ("rewards/accuracies", "eval/rewards/accuracies", "reward accuracy"),
)


def plot_training_curves(
    curves: Mapping[str, tuple[str, Sequence[dict[str, Any]]]], path: Path, *, title: str = ""
) -> Path | None:
    """Training (solid) and held-out (dots) loss, reward margin and accuracy against the step.

    Args:
        curves: run label -> (loss name, that run's preference-stage metrics records).
        path: the PNG file to write.
        title: figure title.

    Returns:
        ``path``, or None when no run has any training record (nothing is written then).
    """
    if not any(any("loss" in r for r in records) for _, records in curves.values()):
        return None
    colours = _colours([loss for loss, _ in curves.values()])
    style_index: dict[str, int] = {}
    fig, axes = plt.subplots(1, len(_CURVES), figsize=(5 * len(_CURVES), 4))
    for label, (loss, records) in curves.items():
        index = style_index[loss] = style_index.get(loss, -1) + 1
        style = _LINESTYLES[index % len(_LINESTYLES)]
        for ax, (train_key, eval_key, _) in zip(axes, _CURVES, strict=True):
            train = [(r["step"], r[train_key]) for r in records if train_key in r and "step" in r]
            held_out = [(r["step"], r[eval_key]) for r in records if eval_key in r and "step" in r]
            if train:
                ax.plot(*zip(*train, strict=True), style, color=colours[loss], label=label)
            if held_out:
                ax.plot(*zip(*held_out, strict=True), "o", color=colours[loss], markersize=4)
    for ax, (_, _, name) in zip(axes, _CURVES, strict=True):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "training (lines) and held-out (dots) metrics")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
