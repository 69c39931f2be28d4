"""Number formatting shared by every report table: one way to print an estimate with its interval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_interval", "format_value"]


def format_interval(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``estimate [low, high]`` of an interval dict (``{estimate, low, high}``); ``-`` when there is none,
    the estimate alone when the bounds are NaN (too few samples for an interval)."""
    if not entry:
        return "-"
    low, high = entry["low"], entry["high"]
    if low != low or high != high:
        return f"{entry['estimate']:.{digits}f}"
    return f"{entry['estimate']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, ``-`` for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
