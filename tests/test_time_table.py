"""The time table printed at the end of a run is readable at 80 columns (a log file, a terminal of default
width): every phase name and every number is printed whole, on its phase's line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from alignkit.report.tables import render_report

PHASES = [  # the longest names and widest figures a run prints: several dtypes, GPU-sized rates
    ("loading", 0, 42.8, [], None, None, None, None),
    ("data preparation", 0, 1476.28, [], None, None, None, None),
    ("generation", 1, 1471.26, ["bfloat16", "float32"], 1.76e12, 0.9999, 12345.6, 0.123),
    ("training", 0, 9316.59, [], None, None, None, None),
    ("reference log-probs", 1, 83.33, ["float32"], 9.21e13, 0.51, None, None),
    ("forward/backward", 1, 7199.11, ["bfloat16", "float32"], 9.89e14, 1.0, None, None),
    ("evaluation", 0, 344.22, [], None, None, None, None),
    ("judge", 1, 114.42, [], None, None, None, None),
    ("generation", 2, 114.28, ["bfloat16"], 2.24e10, 0.0012, 34.72, 0.026),
    ("other (outside any phase)", 0, 0.3, [], None, None, None, None),
]


def _section() -> dict:
    wall = 11180.73
    rows = [{"phase": name, "path": [name], "depth": depth, "seconds": seconds, "share": seconds / wall,
             "precision": precision, "flops_per_second": flops, "peak_fraction": peak, "tokens_per_second": tokens,
             "bandwidth_fraction": bandwidth}
            for name, depth, seconds, precision, flops, peak, tokens, bandwidth in PHASES]
    return {"phases": rows, "wall_seconds": wall, "convention": "2 FLOPs per parameter per token"}


@pytest.mark.parametrize("width", [80, 120])
def test_the_printed_time_table_is_whole_at_80_columns(width):
    out = io.StringIO()
    render_report({"recipe": "r", "time_breakdown": _section()}, console=Console(file=out, width=width))
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= width
    assert "…" not in out.getvalue()
    expected = {"· generation": ["bf16+fp32", "1471.26", "13.2%", "1.76e+03", "(100%)", "1.235e+04", "(12%)"],
                "· forward/backward": ["bf16+fp32", "7199.11", "64.4%", "9.89e+05", "(100%)"],
                "· · generation": ["bf16", "114.28", "1.0%", "22.4", "(0.12%)", "34.72", "(2.6%)"],
                "other (outside any phase)": ["0.30", "0.0%"], "wall time": ["11180.73", "100.0%"]}
    for phase, cells in expected.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(phase + " "))
        words = lines[at][len(phase):].split()
        below = lines[at + 1].split()
        if below and all(w.startswith("(") for w in below):  # a narrow console puts the fractions below
            words += below
        assert sorted(words) == sorted(cells), lines[at:at + 2]
    markdown = render_report({"recipe": "r", "time_breakdown": _section()}, console=Console(file=io.StringIO()))
    assert "| · generation | bf16+fp32 | 1471.26 | 13.2% | 1.76e+03 | 100% | 1.235e+04 | 12% |" in markdown
