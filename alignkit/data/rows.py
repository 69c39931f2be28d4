"""Turn one row with prompt/chosen/rejected columns (text or conversations) into a PreferenceExample.

Accepted row shapes (column names are configurable):

- text: ``{"prompt": str, "chosen": str, "rejected": str}``; responses are kept exactly as written
  (mind the leading space your tokenizer expects between prompt and response).
- explicit prompt, conversational: ``{"prompt": [messages], "chosen": [assistant messages],
  "rejected": [...]}``. chosen/rejected may also repeat the prompt messages first; they are removed.
  A text prompt with message responses becomes one user message.
- implicit prompt: no prompt column and ``chosen``/``rejected`` are full conversations; the prompt is
  their shared leading messages and the responses start at the first assistant message after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from alignkit.data.config import HFDatasetSource, JsonlSource
from alignkit.data.types import (
    EMPTY_RESPONSE,
    IDENTICAL,
    MALFORMED,
    NO_ASSISTANT,
    DropReport,
    Message,
    PreferenceExample,
    TextOrMessages,
    is_conversation,
)

__all__ = ["row_to_example", "row_weight"]


def _is_empty(value: TextOrMessages) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value)


def _as_messages(value: TextOrMessages, role: str) -> list[Message]:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _shared_prefix(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _split_implicit(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]] | None:
    """Shared prompt and the two continuations, cut at the last user/system message both share."""
    n = _shared_prefix(chosen, rejected)
    # Responses begin at an assistant message: back off over shared assistant turns that end the prefix
    # only when the continuation would otherwise not start with one.
    while n > 0 and chosen[n - 1]["role"] == "assistant" and (
        n >= len(chosen) or chosen[n]["role"] != "assistant"
    ):
        n -= 1
    if n == 0 or n >= len(chosen) or n >= len(rejected):
        return None
    if chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        return None
    return chosen[:n], chosen[n:], rejected[n:]


def _strip_prompt(prompt: list[Message], response: list[Message]) -> list[Message]:
    if len(response) > len(prompt) and response[: len(prompt)] == prompt:
        return response[len(prompt):]
    return response


def row_to_example(
    row: dict[str, Any], cols: JsonlSource | HFDatasetSource, where: str, report: DropReport
) -> PreferenceExample | None:
    """The example in ``row``, or None after counting in ``report`` why it was dropped.

    Args:
        row: one record (a parsed JSON line, or a datasets row).
        cols: the source config naming the columns.
        where: location for error reports, e.g. ``"pairs.jsonl:17"``.
        report: receives the reason of a dropped row.
    """

    def malformed(why: str) -> None:
        report.drop(MALFORMED, f"{where}: {why}")

    for name in (cols.chosen_field, cols.rejected_field):
        if name not in row:
            malformed(f"missing field {name!r}")
            return None
    chosen, rejected, prompt = row[cols.chosen_field], row[cols.rejected_field], row.get(cols.prompt_field)
    for name, value in ((cols.chosen_field, chosen), (cols.rejected_field, rejected)):
        if value is None:
            malformed(f"field {name!r} is null")
            return None
    for name, value in ((cols.chosen_field, chosen), (cols.rejected_field, rejected), (cols.prompt_field, prompt)):
        if value is not None and not isinstance(value, str) and not is_conversation(value):
            malformed(f"field {name!r} must be text or a list of {{role, content}} messages")
            return None

    weight = row_weight(row, cols.weight_field, malformed)
    if weight is None:
        return None

    conversational = is_conversation(chosen) or is_conversation(rejected) or is_conversation(prompt)
    if prompt is None:
        if not (is_conversation(chosen) and is_conversation(rejected)):
            malformed(f"missing field {cols.prompt_field!r} (needed unless chosen/rejected are conversations)")
            return None
        if chosen == rejected:
            report.drop(IDENTICAL, where)
            return None
        split = _split_implicit(chosen, rejected)
        if split is None:
            report.drop(NO_ASSISTANT, f"{where}: no assistant message after the shared prompt")
            return None
        prompt, chosen, rejected = split
    elif conversational:
        prompt = _as_messages(prompt, "user")
        chosen = _strip_prompt(prompt, _as_messages(chosen, "assistant"))
        rejected = _strip_prompt(prompt, _as_messages(rejected, "assistant"))

    if _is_empty(chosen) or _is_empty(rejected):
        report.drop(EMPTY_RESPONSE, where)
        return None
    if chosen == rejected:
        report.drop(IDENTICAL, where)
        return None
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, weight=weight)


def row_weight(row: dict, field: str | None, malformed: Callable[[str], None]) -> float | None:
    """The row's example weight (1.0 without a weight column), or None after reporting a bad value."""
    if field is None:
        return 1.0
    raw = row.get(field)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
        malformed(f"field {field!r} must be a finite number >= 0, got {raw!r}")
        return None
    return float(raw)
