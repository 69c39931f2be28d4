"""The "where the time went" table of a run's report, from its ``time_breakdown`` section."""

from __future__ import annotations

from typing import Any

__all__ = ["TIME_HEADER", "time_markdown", "time_rows"]

TIME_HEADER = ["phase", "seconds", "share", "model GFLOP/s", "of peak", "tokens/s", "of bandwidth bound"]


def _gflops(value: float | None) -> str:
    return "" if value is None else f"{value / 1e9:.3g}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _fraction(value: float | None) -> str:
    """A fraction of peak: tiny models reach a few thousandths of it, which must not print as 0.0%."""
    return "" if value is None else f"{100 * value:.2g}%"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def time_rows(section: dict[str, Any]) -> list[list[str]]:
    """One row per phase (children indented under their parent), then the total wall time."""
    rows = [["· " * row["depth"] + row["phase"], f"{row['seconds']:.2f}", _percent(row["share"]),
             _gflops(row.get("flops_per_second")), _fraction(row.get("peak_fraction")),
             _rate(row.get("tokens_per_second")), _fraction(row.get("bandwidth_fraction"))]
            for row in section["phases"]]
    rows.append(["wall time", f"{section['wall_seconds']:.2f}", _percent(1.0), "", "", "", ""])
    return rows


def time_markdown(section: dict[str, Any] | None) -> str:
    """The table as Markdown, with the peaks it is measured against and the FLOP convention ('' if none)."""
    if not section:
        return ""
    lines = ["## Where the time went", "", "| " + " | ".join(TIME_HEADER) + " |", "|---|" + "---:|" * (len(TIME_HEADER) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in time_rows(section)]
    peaks = ", ".join(f"{dtype} {p['flops_per_second'] / 1e9:.3g} GFLOP/s on {p['device']}"
                      + (f" ({p['threads']} threads)" if "threads" in p else "")
                      for dtype, p in section.get("peak_flops", {}).items())
    lines += ["", "Shares are of the wall time; a child's time is part of its parent's."]
    if peaks:
        lines.append(f"Peak matmul throughput measured here: {peaks}.")
    bandwidth = section.get("read_bandwidth")
    if bandwidth:
        threads = f" ({bandwidth['threads']} threads)" if "threads" in bandwidth else ""
        lines.append(f"Memory read bandwidth measured here: {bandwidth['bytes_per_second'] / 1e9:.3g} GB/s on "
                     f"{bandwidth['device']}{threads}.")
    lines += [f"Convention: {section['convention']}.", ""]
    return "\n".join(lines)
