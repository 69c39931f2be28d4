"""The "where the time went" table of a run's report, from its ``time_breakdown`` section."""

from __future__ import annotations

from typing import Any

__all__ = ["TIME_CONSOLE_CAPTION", "TIME_CONSOLE_HEADER", "TIME_HEADER", "phase_precisions", "time_console_rows", "time_markdown", "time_rows"]

TIME_HEADER = ["phase", "precision", "seconds", "share", "model GFLOP/s", "of peak", "tokens/s", "of bandwidth bound"]
# The printed table pairs each rate with its fraction in one cell, so that it fits 80 columns (a log file, a
# terminal of default width) without cutting a phase name; report.md keeps every column of its own.
TIME_CONSOLE_HEADER = ["phase", "dtype", "seconds", "share", "GFLOP/s", "tokens/s"]
TIME_CONSOLE_CAPTION = ("in brackets: model FLOP/s as a share of the peak matmul throughput measured here, tokens/s as "
                        "a share of the memory-bandwidth bound")


def _gflops(value: float | None) -> str:
    return "" if value is None else f"{value / 1e9:.3g}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _fraction(value: float | None) -> str:
    """A fraction of peak: tiny models reach a few thousandths of it, which must not print as 0.0%; from 10%
    on, whole percent (99.99% is 100%, never 1e+02%)."""
    if value is None:
        return ""
    return f"{100 * value:.0f}%" if 100 * value >= 9.95 else f"{100 * value:.2g}%"


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _precision(row: dict[str, Any]) -> str:
    """The dtypes a phase's model computed in (``fp32``, ``bf16``, ``bf16+fp32``); '' where none ran."""
    return "+".join(_SHORT_DTYPES.get(d, d) for d in row.get("precision", []))


def phase_precisions(section: dict[str, Any] | None) -> str:
    """``generation bf16, forward/backward fp32, ...``: each phase that ran a model and its precision."""
    if not section:
        return ""
    return ", ".join(f"{' › '.join(row['path'])} {_precision(row)}" for row in section["phases"]
                     if _precision(row))


def _when(measure: dict[str, Any]) -> str:
    """`` (measured <UTC time>; measured again in this run: <why>)`` for a peak or bandwidth, as known."""
    parts = [f"measured {measure['measured']}"] if measure.get("measured") else []
    if measure.get("remeasured"):
        parts.append(f"measured again in this run: {measure['remeasured']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def time_rows(section: dict[str, Any]) -> list[list[str]]:
    """One row per phase (children indented under their parent), then the total wall time."""
    rows = [["· " * row["depth"] + row["phase"], _precision(row), f"{row['seconds']:.2f}", _percent(row["share"]),
             _gflops(row.get("flops_per_second")), _fraction(row.get("peak_fraction")),
             _rate(row.get("tokens_per_second")), _fraction(row.get("bandwidth_fraction"))]
            for row in section["phases"]]
    rows.append(["wall time", "", f"{section['wall_seconds']:.2f}", _percent(1.0), "", "", "", ""])
    return rows


def time_console_rows(section: dict[str, Any], *, stacked: bool = False) -> list[list[str]]:
    """:func:`time_rows` under :data:`TIME_CONSOLE_HEADER`: each rate and its fraction in one cell, the fraction
    in brackets after the rate (or, ``stacked``, on a line of its own below it, for a narrow console)."""
    gap = "\n" if stacked else " "

    def paired(rate: str, fraction: str) -> str:
        return f"{rate}{gap}({fraction})" if rate and fraction else rate

    return [[*row[:4], paired(row[4], row[5]), paired(row[6], row[7])] for row in time_rows(section)]


def time_markdown(section: dict[str, Any] | None, title: str = "Where the time went") -> str:
    """The table as Markdown under ``## title``, with the peaks it is measured against and the FLOP
    convention ('' if none)."""
    if not section:
        return ""
    lines = [f"## {title}", "", "| " + " | ".join(TIME_HEADER) + " |", "|---|" + "---:|" * (len(TIME_HEADER) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in time_rows(section)]
    peaks = ", ".join(f"{dtype} {p['flops_per_second'] / 1e9:.3g} GFLOP/s on {p['device']}"
                      + (f" ({p['threads']} threads)" if "threads" in p else "") + _when(p)
                      for dtype, p in section.get("peak_flops", {}).items())
    lines += ["", "Shares are of the wall time; a child's time is part of its parent's."]
    if peaks:
        lines.append(f"Peak matmul throughput measured here: {peaks}.")
    bandwidth = section.get("read_bandwidth")
    if bandwidth:
        threads = f" ({bandwidth['threads']} threads)" if "threads" in bandwidth else ""
        lines.append(f"Memory read bandwidth measured here: {bandwidth['bytes_per_second'] / 1e9:.3g} GB/s on "
                     f"{bandwidth['device']}{threads}{_when(bandwidth)}.")
    lines += [f"Convention: {section['convention']}.", ""]
    return "\n".join(lines)
