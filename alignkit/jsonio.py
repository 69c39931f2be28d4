"""The one way alignkit writes JSON: strict, so every file parses with any reader.

A number that is not finite (an interval's bounds from one sample, an explained variance with no variance to
explain) is written as ``null``: Python's ``json`` would write ``NaN``/``Infinity``, which are not JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none", "to_json"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def _number(value: Any) -> float | None:
    """``json.dumps`` fallback for numbers of other types (numpy scalars, one-element tensors)."""
    number = float(value)
    return number if math.isfinite(number) else None


def to_json(value: Any, *, indent: int | None = 2, ensure_ascii: bool = True) -> str:
    """``value`` as strict JSON: non-finite numbers are written as ``null`` (never ``NaN``/``Infinity``).

    Args:
        value: dicts, lists, strings, numbers, booleans and None (numpy scalars and one-element tensors too).
        indent: as ``json.dumps``; None writes one line (a JSON-lines record).
        ensure_ascii: as ``json.dumps``.
    """
    return json.dumps(finite_or_none(value), indent=indent, default=_number, allow_nan=False,
                      ensure_ascii=ensure_ascii)
