"""The closing report of a run: a rich table in the terminal and the same figures as Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from alignkit.cache import write_atomic, writing
from alignkit.report.accuracy import accuracy_markdown
from alignkit.report.format import format_interval, format_value, to_json
from alignkit.report.frontier import front_markdown, plot_online_frontier, proxy_true_markdown
from alignkit.report.judge import judge_markdown, judge_report_rows, judged_evaluations
from alignkit.report.plots import plot_reward_kl, plot_win_rate
from alignkit.report.timing import (
    TIME_CONSOLE_CAPTION,
    TIME_CONSOLE_HEADER,
    phase_precisions,
    time_console_rows,
    time_markdown,
)

__all__ = ["render_report", "report_rows", "write_report"]

_PREFERENCE_METRICS = (
    ("eval/loss", "held-out loss"),
    ("eval/rewards/accuracies", "held-out preference accuracy"),
    ("eval/rewards/margins", "held-out reward margin"),
)


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows of (metric, before, after) for the report's tables."""
    rows: list[list[str]] = []
    pref = report.get("stages", {}).get("preference", {})
    before, after = pref.get("eval_before") or {}, pref.get("eval_after") or {}
    for key, label in _PREFERENCE_METRICS:
        if key in before or key in after:
            rows.append([label, format_value(before.get(key)), format_value(after.get(key))])
    rk = report.get("reward_kl")
    if rk:
        rows.append([f"mean reward ({rk['reward']}, 95% CI)", format_interval(rk["before"]["reward"]), format_interval(rk["after"]["reward"])])
        rows.append(["reward gain, paired (95% CI)", "", format_interval(rk["reward_gain"])])
        rows.append(["KL(policy || reference), nats (95% CI)", format_interval(rk["before"]["kl"]), format_interval(rk["after"]["kl"])])
        rows.append(["mean completion tokens", format_value(rk["before"].get("mean_length"), 1),
                     format_value(rk["after"].get("mean_length"), 1)])
    rows += judge_report_rows(report)
    return ["metric", "before", "after"], rows


def render_report(report: dict[str, Any], *, console: Console, markdown_path: Path | None = None,
                  printed_time: str = "time_breakdown") -> str:
    """Print the report table; write it (with run facts) as Markdown when a path is given.

    ``printed_time`` is the time table printed: the run's (``time_breakdown``) or the latest ``alignkit
    eval``'s (``eval_time_breakdown``); the Markdown holds both.
    """
    header, rows = report_rows(report)
    table = Table(title=f"{report.get('recipe', 'run')}: {report.get('objective', '')}")
    for name in header:
        table.add_column(name, justify="left" if name == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    # Only what was measured: a report without a figure (an older or partial one) gets no line for it.
    facts = [*([f"- wall time: {report['wall_seconds']:.1f} s"] if "wall_seconds" in report else []),
             *([f"- precision: {report['precision']['used']} ({report['precision']['reason']})"]
               if report.get("precision") else []),
             *([f"- precision by phase: {by_phase}"]
               if (by_phase := phase_precisions(report.get("time_breakdown"))) else []),
             *([f"- peak memory (RSS): {report['peak_rss_mib']:.0f} MiB"] if "peak_rss_mib" in report else []),
             *([f"- processes: {report['world_size']}"] if report.get("world_size", 1) > 1 else [])]
    if report.get("train_pairs") is not None:
        facts.append(f"- pairs: {report['train_pairs']} train, {report.get('heldout_pairs')} held out")
    params = report.get("parameters")
    if params:
        facts.append(f"- trainable parameters: {params['trainable']:,} of {params['total']:,}")
    for name, stage in report.get("stages", {}).items():
        sps = stage.get("steps_per_second")
        facts.append(f"- {name}: {stage['steps']} steps in {stage['wall_seconds']:.1f} s"
                     + (f" ({sps:.3f} steps/s)" if sps else ""))
    console.print("\n".join(facts))
    if report.get(printed_time):
        console.print(_time_table(report[printed_time], _TIME_TITLES[printed_time], console))
    md = [f"# {report.get('recipe', 'run')}", "", f"Objective: `{report.get('objective', '')}`", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", *facts, "", time_markdown(report.get("time_breakdown"))]
    if report.get("eval_time_breakdown"):
        md += [time_markdown(report["eval_time_breakdown"], _TIME_TITLES["eval_time_breakdown"].capitalize())]
    text = "\n".join(md)
    if markdown_path is not None:
        with writing(markdown_path) as f:
            f.write(text)
    return text


_TIME_TITLES = {"time_breakdown": "where the time went",
                "eval_time_breakdown": "where the time of the latest `alignkit eval` went"}


def _time_table(section: dict[str, Any], title: str, console: Console) -> Table:
    """The printed time table, whole at 80 columns: no side borders, each rate with its fraction in one cell,
    and where that is still too wide for ``console``, each fraction on a line below its rate. Nothing is cut."""
    for stacked in (False, True):
        table = Table(title=title, caption=TIME_CONSOLE_CAPTION, box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False, collapse_padding=True)
        for name in TIME_CONSOLE_HEADER:
            table.add_column(name, justify="left" if name == "phase" else "right", no_wrap=True, overflow="fold")
        for row in time_console_rows(section, stacked=stacked):
            table.add_row(*row)
        if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
            break
    return table


def write_report(report: dict[str, Any], run_dir: Path, *, console: Console,
                 printed_time: str = "time_breakdown") -> None:
    """Write plots (win rate, reward vs KL, an online run's WARP front), report.json and report.md into
    ``run_dir``, each once; print the table (and the time table ``printed_time``, see :func:`render_report`)."""
    plots = []
    if judged_evaluations(report):
        plots.append(plot_win_rate(judged_evaluations(report), run_dir / "plots" / "win_rate.png"))
    if report.get("reward_kl"):
        plots.append(plot_reward_kl(report["reward_kl"], run_dir / "plots" / "reward_kl.png"))
    report["plots"] = [str(p.relative_to(run_dir)) for p in plots]
    write_atomic(run_dir / "report.json", to_json(report))
    markdown = render_report(report, console=console, printed_time=printed_time)
    write_atomic(run_dir / "report.md", markdown + "\n" + judge_markdown(report, report["plots"])
                 + _online_markdown(report, run_dir))


def _online_markdown(report: dict[str, Any], run_dir: Path) -> str:
    """The sections only online runs have: proxy versus true reward, and WARP's front (plotted here from the
    report.json just written)."""
    text = accuracy_markdown(report["accuracy"]) if report.get("accuracy") else ""
    if report.get("proxy_vs_true"):
        text += proxy_true_markdown(report["proxy_vs_true"], report.get("proxy_vs_true_plot"))
    if report.get("warp_front"):
        plot = plot_online_frontier([run_dir], run_dir / "plots" / "warp_front.png",
                                    title=f"{report.get('recipe', 'run')}: WARP front")
        text += front_markdown(report) + (f"\n![warp front]({plot.relative_to(run_dir)})\n" if plot else "")
    return text
