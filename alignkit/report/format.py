"""Number formatting shared by every report table: one way to print an estimate with its interval.

Re-exports the one way a report is written as JSON (:func:`alignkit.jsonio.to_json`): a number that is not finite (an interval's
bounds from a single sample are NaN) becomes ``null``, so every file is strict JSON that any reader parses.
Readers therefore accept both NaN (in memory) and None (read back) for a missing bound (:func:`bound`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alignkit.jsonio import finite_or_none, to_json

__all__ = ["bound", "finite_or_none", "format_interval", "format_value", "to_json"]


def bound(entry: Mapping[str, Any], key: str) -> float | None:
    """An interval's bound ``key`` (``"low"`` or ``"high"``); None when it is missing, None or NaN."""
    value = entry.get(key)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def format_interval(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``estimate [low, high]`` of an interval dict (``{estimate, low, high}``); ``-`` when there is none,
    the estimate alone when a bound is missing, None or NaN (too few samples for an interval)."""
    if not entry:
        return "-"
    low, high = bound(entry, "low"), bound(entry, "high")
    if low is None or high is None:
        return f"{entry['estimate']:.{digits}f}"
    return f"{entry['estimate']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, ``-`` for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
