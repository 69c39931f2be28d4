"""Results over several training seeds: the spread of training, not only of evaluation.

A run's reward and KL come with a 95% interval over its held-out prompts: evaluation noise for that one
trained model. Training the same recipe with another seed (data order, adapter initialisation, sampling)
moves the figures by more than that, so `alignkit compare --seeds` trains every method once per seed and
this module summarises them:

- :func:`t_interval`: mean and two-sided Student-t interval of per-seed values (n - 1 degrees of freedom);
- :func:`seed_summary`: one row per method (a run label without its seed): the mean reward and KL across
  seeds with that interval, next to the mean half-width of the per-seed evaluation intervals;
- :func:`paired_differences`: each method minus a baseline, seed by seed (the same seeds on both sides),
  so a difference whose interval excludes 0 held up over these seeds;
- :func:`seeds_markdown`: both as Markdown.

Seeded rows are comparison rows (see :func:`alignkit.report.compare_table.comparison_row`) with two more
keys: ``group`` (the label shared by every seed of a method) and ``seed``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from alignkit.report.format import bound, format_interval

__all__ = [
    "paired_differences",
    "seed_summary",
    "seeded_rows",
    "seeds_markdown",
    "t_interval",
    "t_quantile",
]


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (closed form for whole df).

    The finite series of Abramowitz and Stegun 26.7.3 (odd df) and 26.7.4 (even df) in theta = atan(t/sqrt(df)).
    """
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # terms (1*3*...*(k-1)) / (2*4*...*k) * cos^k
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if df == 1:
        return 2.0 * theta / math.pi
    term, total = math.cos(theta), math.cos(theta)
    for k in range(3, df - 1, 2):  # terms (2*4*...*(k-1)) / (1*3*...*k) * cos^k
        term *= c2 * (k - 1) / k
        total += term
    return 2.0 / math.pi * (theta + s * total)


def t_quantile(confidence: float, df: int) -> float:
    """The t such that P(|T| < t) = ``confidence`` (e.g. 12.706 for 0.95 and df 1, 2.776 for df 4).

    Raises:
        ValueError: a confidence outside (0, 1) or df below 1.
    """
    if not 0.0 < confidence < 1.0 or df < 1:
        raise ValueError(f"t quantile: confidence {confidence} must be in (0, 1) and df {df} at least 1")
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < confidence:
        high *= 2.0
    for _ in range(200):  # bisection: the mass is increasing in t
        mid = (low + high) / 2.0
        if _t_two_sided_mass(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float] | None:
    """Mean of ``values`` with its two-sided Student-t interval: mean +- t(n-1) * sd / sqrt(n).

    Returns:
        ``{"estimate", "low", "high", "n", "sd"}``; the bounds and sd are NaN for a single value (no spread
        to measure); None for no values.
    """
    if not values:
        return None
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return {"estimate": mean, "low": math.nan, "high": math.nan, "n": 1, "sd": math.nan}
    sd = statistics.stdev(values)
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return {"estimate": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}


def _half_width(entry: dict[str, Any] | None) -> float | None:
    if not entry:
        return None
    low, high = bound(entry, "low"), bound(entry, "high")
    return None if low is None or high is None else (high - low) / 2.0


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _estimate(entry: Any) -> float | None:
    if isinstance(entry, dict):
        return float(entry["estimate"])
    return float(entry) if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None


def seeded_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that belong to a seeded run (they have a ``seed``)."""
    return [r for r in rows if r.get("seed") is not None]


def _by_group(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in seeded_rows(rows):
        groups.setdefault(row["group"], []).append(row)
    return groups


def seed_summary(rows: Iterable[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per method over its seeds (rows without a seed are left out).

    Returns:
        Rows with ``label`` (the group), ``loss``, ``params``, ``seeds`` (those with a reward and KL),
        ``missing_seeds`` (failed or not evaluated), ``reward`` and ``kl`` (across-seed t-intervals, the keys
        :func:`alignkit.report.compare_plots.plot_frontier` reads), ``reward_eval_half_width`` and
        ``kl_eval_half_width`` (the mean half-width of the per-seed evaluation intervals),
        ``heldout_accuracy`` (t-interval, when the runs measured it), and the reference model's figures.
    """
    out = []
    for group, members in _by_group(rows).items():
        evaluated = [m for m in members if m.get("reward") and m.get("kl")]
        accuracies = [a for a in (_estimate(m.get("heldout_accuracy")) for m in members) if a is not None]
        first = evaluated[0] if evaluated else members[0]
        out.append({
            "label": group, "loss": first["loss"], "params": dict(first.get("params") or {}),
            "seeds": [m["seed"] for m in evaluated],
            "missing_seeds": [m["seed"] for m in members if m not in evaluated],
            "reward": t_interval([m["reward"]["estimate"] for m in evaluated], confidence),
            "kl": t_interval([m["kl"]["estimate"] for m in evaluated], confidence),
            "reward_eval_half_width": _mean_or_none(_half_width(m["reward"]) for m in evaluated),
            "kl_eval_half_width": _mean_or_none(_half_width(m["kl"]) for m in evaluated),
            "heldout_accuracy": t_interval(accuracies, confidence),
            "reward_name": first.get("reward_name"), "reference_reward": first.get("reference_reward"),
            "reference_kl": first.get("reference_kl"),
        })
    return out


def paired_differences(rows: Iterable[dict[str, Any]], baseline: str | None = None,
                       confidence: float = 0.95) -> list[dict[str, Any]]:
    """Every other method minus ``baseline`` (default: the first method), seed by seed.

    Only seeds that both methods evaluated are paired; the interval is the t-interval of the per-seed
    differences, which removes what the two share (the seed's data order, the evaluation's prompts).

    Returns:
        ``{"label", "baseline", "seeds", "reward_difference", "kl_difference"}`` per other method.

    Raises:
        ValueError: a ``baseline`` that is not one of the seeded methods.
    """
    groups = _by_group(rows)
    if not groups:
        return []
    base = baseline if baseline is not None else next(iter(groups))
    if base not in groups:
        raise ValueError(f"--baseline {base!r}: not a compared method; methods: {', '.join(groups)}")

    def points(group: str) -> dict[int, dict[str, Any]]:
        return {m["seed"]: m for m in groups[group] if m.get("reward") and m.get("kl")}

    ours = points(base)
    out = []
    for group in groups:
        if group == base:
            continue
        theirs = points(group)
        seeds = sorted(set(ours) & set(theirs))
        diff = {key: t_interval([theirs[s][key]["estimate"] - ours[s][key]["estimate"] for s in seeds], confidence)
                for key in ("reward", "kl")}
        out.append({"label": group, "baseline": base, "seeds": seeds, "reward_difference": diff["reward"],
                    "kl_difference": diff["kl"]})
    return out


def _pm(value: float | None, digits: int) -> str:
    return "-" if value is None else f"+-{value:.{digits}f}"


def _verdict(entry: dict[str, Any] | None) -> str:
    low, high = (bound(entry, "low"), bound(entry, "high")) if entry else (None, None)
    if low is None or high is None:
        return "too few seeds"
    return "higher" if low > 0 else "lower" if high < 0 else "not distinguished"


def seeds_markdown(rows: Sequence[dict[str, Any]], baseline: str | None = None) -> str:
    """The across-seed summary and the paired differences as a Markdown section ('' without seeded rows)."""
    summary = seed_summary(rows)
    if not summary:
        return ""
    lines = ["", "## Across seeds", "",
             "Mean over the seeds with a 95% Student-t interval across seeds (training spread), next to the mean "
             "half-width of each seed's own 95% evaluation interval (held-out prompt noise).", "",
             "| method | seeds | mean reward (95% CI across seeds) | per-seed eval. +- | "
             "KL to ref., nats (95% CI across seeds) | per-seed eval. +- | held-out pref. acc. (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        seeds = ",".join(map(str, s["seeds"])) + (f" (missing {','.join(map(str, s['missing_seeds']))})"
                                                   if s["missing_seeds"] else "")
        lines.append(f"| {s['label']} | {seeds} | {format_interval(s['reward'])} | "
                     f"{_pm(s['reward_eval_half_width'], 3)} | {format_interval(s['kl'], 2)} | "
                     f"{_pm(s['kl_eval_half_width'], 2)} | {format_interval(s['heldout_accuracy'])} |")
    paired = paired_differences(rows, baseline)
    if paired:
        base = paired[0]["baseline"]
        lines += ["", f"## Paired differences against {base}", "",
                  f"Each method minus {base} on the same seed, averaged over the seeds both evaluated, with a 95% "
                  "Student-t interval of the per-seed differences.", "",
                  "| method | seeds | reward difference (95% CI) | reward | KL difference, nats (95% CI) | KL |",
                  "|---|---|---|---|---|---|"]
        for p in paired:
            lines.append(f"| {p['label']} | {','.join(map(str, p['seeds']))} | "
                         f"{format_interval(p['reward_difference'])} | {_verdict(p['reward_difference'])} | "
                         f"{format_interval(p['kl_difference'], 2)} | {_verdict(p['kl_difference'])} |")
    return "\n".join(lines) + "\n"
