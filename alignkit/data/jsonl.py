"""Read JSON-lines files (plain or gzip) without letting one bad line stop the run."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignkit.data.types import MALFORMED, DataError, DropReport

__all__ = ["read_jsonl", "require_file"]


def require_file(path: str | Path, field: str) -> Path:
    """``path`` as a Path, or a DataError naming the recipe field when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{field}: file not found: {str(path)!r} (resolved to {p.resolve()})")
    return p


class _NotJsonNumber(ValueError):
    """NaN, Infinity or -Infinity in a line: Python's json reads them, JSON has no such numbers."""


def _refuse_constant(constant: str) -> Any:
    raise _NotJsonNumber(constant)


def read_jsonl(path: Path, report: DropReport) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", row)`` for every JSON object line of a .jsonl or .jsonl.gz file.

    Blank lines are skipped silently. Lines that are not valid JSON (NaN or Infinity, an integer over Python's
    4,300 digits and nesting too deep for the parser included), or not a JSON object, are counted in ``report`` as
    malformed with their ``file:line`` and skipped. Every non-blank line counts as seen.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{line_no}"
                report.seen += 1
                try:
                    row = json.loads(line, parse_constant=_refuse_constant)
                except _NotJsonNumber as err:  # a non-finite weight or score must not reach a loss
                    report.drop(MALFORMED, f"{where}: {err} is not a JSON number")
                    continue
                except json.JSONDecodeError as err:
                    report.drop(MALFORMED, f"{where}: invalid JSON ({err.msg})")
                    continue
                except ValueError:  # Python's limit on integer digits (sys.get_int_max_str_digits())
                    report.drop(MALFORMED, f"{where}: an integer too long to read (over "
                                           f"{sys.get_int_max_str_digits()} digits)")
                    continue
                except RecursionError:
                    report.drop(MALFORMED, f"{where}: JSON nested too deeply")
                    continue
                if not isinstance(row, dict):
                    report.drop(MALFORMED, f"{where}: not a JSON object")
                    continue
                yield where, row
    except (OSError, EOFError, UnicodeDecodeError) as err:  # a truncated gzip or a binary file
        raise DataError(f"cannot read {path}: {err}") from err
