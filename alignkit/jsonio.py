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

__all__ = ["RunFileError", "finite_or_none", "parse_json", "read_json", "read_jsonl", "to_json"]


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


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def parse_json(text: str | bytes, where: str, what: str = "JSON") -> Any:
    """``text`` parsed as strict JSON (no NaN or Infinity); every way it fails (garbage, an integer over
    Python's digit limit, nesting too deep, bytes that do not decode) is a :class:`RunFileError` naming
    ``where`` on one line.

    Args:
        text: the JSON text (bytes are decoded as json.loads does: UTF-8, -16 or -32).
        where: the file (or ``file:line``) the text came from, for the message.
        what: what the text is, for the message.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RunFileError(f"{where}: not {what}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, the integer digit limit, NaN/Infinity
        raise RunFileError(f"{where}: not {what}: {str(err).splitlines()[0][:200]}") from None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: cannot read {what}: {type(err).__name__}: {err}") from None


def read_jsonl(path: str | Path, *, what: str = "a JSON-lines record", torn_tail: bool = False) -> list[dict[str, Any]]:
    """The records of the JSON-lines file ``path`` (one JSON object a line; blank lines skipped).

    A line that is not a strict JSON object (NaN or Infinity, garbage, a list) is a :class:`RunFileError`
    naming the file and the line: a run folder's log is read whole or not at all.

    Args:
        path: the file (``metrics.jsonl``, ``judged_pairs.jsonl``, ...).
        what: what each line is, for the message (``"a metrics record"``).
        torn_tail: skip a last line that has no newline and does not parse: the half a killed writer left
            (only the last line can be torn; any other bad line is still an error).
    """
    path = Path(path)
    records = []
    # split("\n"), not splitlines(): a string value may hold U+2028 and other characters splitlines() breaks on
    lines = _read_text(path, what).split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}:{number}", what)
        except RunFileError:
            if torn_tail and number == len(lines):  # no newline after it: the write was cut short
                continue
            raise
        if not isinstance(record, dict):
            raise RunFileError(f"{path}:{number}: not {what}: a JSON {type(record).__name__} where an object "
                               "belongs")
        records.append(record)
    return records


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
    value = parse_json(_read_text(Path(path), what), str(path), what)
    if not isinstance(value, expect):
        raise RunFileError(f"{path}: not {what}: a JSON {type(value).__name__} where a {expect.__name__} belongs")
    return value
