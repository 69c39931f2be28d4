"""An on-disk cache of judge answers, so that judging the same pairs again sends no request.

One JSON line per answer, appended under a lock; the key is a SHA-256 of everything that determines the
answer (judge model, prompt version, sampling settings, the prompt and both responses in their order).
Only answers the server actually gave are stored: transport failures are retried on the next run. The file is
read strictly (:func:`alignkit.jsonio.read_jsonl`): a last line an interrupted write tore is dropped (that answer
is asked for again); any other line that is not a ``{"key": str, "raw": str}`` record is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from alignkit.cache import writing
from alignkit.jsonio import RunFileError, read_jsonl, to_json

__all__ = ["VerdictCache", "verdict_key"]

def verdict_key(**parts: Any) -> str:
    """A stable hex key of ``parts`` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()).hexdigest()


class VerdictCache:
    """A JSON-lines file of ``{"key": ..., "raw": ...}`` answers, loaded into memory on open.

    Thread-safe: the HTTP judge writes from its worker threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        if self.path.exists():
            for row in read_jsonl(self.path, what="a judge's cached answer", torn_tail=True):
                if not isinstance(row.get("key"), str) or not isinstance(row.get("raw"), str):
                    raise RunFileError(f"{self.path}: not a judge's cached answer: {sorted(row)[:4]} is not a "
                                       "{key, raw} pair of strings; remove the file to ask again")
                self._answers[row["key"]] = row["raw"]

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._answers.get(key)

    def put(self, key: str, raw: str) -> None:
        with self._lock:
            if key in self._answers:
                return
            self._answers[key] = raw
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with writing(self.path, "a") as f:
                f.write(to_json({"key": key, "raw": raw}, indent=None, ensure_ascii=False) + "\n")
