"""The one way alignkit writes JSON: strict, so every file parses with any reader.

A number that is not finite (an interval's bounds from one sample, an explained variance with no variance to
explain) is written as ``null``: Python's ``json`` would write ``NaN``/``Infinity``, which are not JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunFileError", "finite_or_none", "read_json", "read_records", "to_json"]


class RunFileError(ValueError):
    """A file alignkit reads back (a checkpoint, a manifest, a report) that it cannot have written: the message
    names the file and says what is wrong, on one line."""


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


def read_json(path: str | Path, *, expect: type = dict, what: str = "JSON") -> Any:
    """The parsed contents of the JSON file ``path``, checked to be an ``expect`` at the top.

    Every way a crafted or damaged file fails (unreadable, not UTF-8, not JSON, an integer over Python's
    digit limit, nesting too deep for the parser, NaN, the wrong type at the top) is a :class:`RunFileError`
    naming the file.

    Args:
        path: the file.
        expect: the type the top-level value must have (dict, list, ...).
        what: what the file is, for the message (``"a checkpoint state"``).
    """
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: cannot read {what}: {type(err).__name__}: {err}") from None
    except RecursionError:
        raise RunFileError(f"{path}: not {what}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, the integer digit limit, NaN/Infinity
        raise RunFileError(f"{path}: not {what}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(value, expect):
        raise RunFileError(f"{path}: not {what}: a JSON {type(value).__name__} where a {expect.__name__} belongs")
    return value


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file alignkit wrote (``metrics.jsonl``); [] when there is no file.

    Raises:
        RunFileError: a line that is not a JSON object, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise RunFileError(f"{path}:{number}: not a JSON line ({err})") from None
        if not isinstance(record, dict):
            raise RunFileError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records
