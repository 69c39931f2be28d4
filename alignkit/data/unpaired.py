"""Unpaired feedback: one response per prompt with a thumbs-up or thumbs-down, for KTO and unpaired BCO.

Accepted rows (column names are configurable, see ``data.source`` of kind ``unpaired_jsonl`` or
``unpaired_hf_dataset``):

- text: ``{"prompt": str, "completion": str, "label": true}``;
- conversational, explicit prompt: ``{"prompt": [messages], "completion": [assistant messages], "label": false}``
  (a text prompt with message completions becomes one user message);
- conversational, one column: ``{"messages": [..., {"role": "assistant", ...}], "label": true}``: the last
  assistant message is the completion, the messages before it the prompt.

``label`` must be JSON ``true`` (desirable) or ``false`` (undesirable). Unusable rows are counted with their
``file:line`` (or ``row N``) and skipped, never raised on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit.data.rows import row_weight
from alignkit.data.types import (
    EMPTY_RESPONSE,
    MALFORMED,
    NO_ASSISTANT,
    DropReport,
    Message,
    TextOrMessages,
    is_conversation,
)

__all__ = ["TokenizedUnpaired", "UnpairedExample", "label_counts", "row_to_unpaired"]


@dataclass
class UnpairedExample:
    """One response to a prompt, labelled desirable (True) or undesirable (False), before tokenization."""

    prompt: TextOrMessages
    completion: TextOrMessages
    label: bool
    weight: float = 1.0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.prompt) or is_conversation(self.completion)

    @property
    def chosen(self) -> TextOrMessages | None:
        """The completion when it is desirable (evaluation compares samples with it), else None."""
        return self.completion if self.label else None


@dataclass
class TokenizedUnpaired:
    """An unpaired example as token ids; the completion ids exclude the prompt.

    Attributes:
        prompt_ids, completion_ids: the model reads ``prompt_ids + completion_ids``; the loss is taken over
            the completion.
        label: True for a desirable completion.
        weight: per-example loss weight.
        index: unique position over the train and test items (keys cached reference log-probs).
        mismatched_prompt_ids: the prompt of another example of the same split, fixed when the data is
            prepared, that the completion is also scored after (KTO's reference point); it keeps its end so
            that it and the completion fit ``max_length``.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    weight: float
    index: int
    mismatched_prompt_ids: list[int] = field(default_factory=list)


def label_counts(items: list[Any]) -> tuple[int, int]:
    """(desirable, undesirable) counts of unpaired items or examples."""
    desirable = sum(1 for item in items if item.label)
    return desirable, len(items) - desirable


def _split_conversation(messages: list[Message]) -> tuple[list[Message], list[Message]] | None:
    """(prompt, [last assistant message]) of a conversation ending in an assistant turn, else None."""
    last = len(messages) - 1
    if last < 1 or messages[last]["role"] != "assistant":
        return None
    return messages[:last], messages[last:]


def _is_empty(value: TextOrMessages) -> bool:
    return not value.strip() if isinstance(value, str) else not any(m["content"].strip() for m in value)


def row_to_unpaired(row: dict[str, Any], cols: Any, where: str, report: DropReport) -> UnpairedExample | None:
    """The example in ``row``, or None after counting in ``report`` why it was dropped.

    Args:
        row: one record (a parsed JSON line, or a datasets row).
        cols: the source config naming the columns (``prompt_field``, ``completion_field``, ...).
        where: location for the report, e.g. ``"feedback.jsonl:17"``.
        report: receives the reason of a dropped row.
    """

    def malformed(why: str) -> None:
        report.drop(MALFORMED, f"{where}: {why}")

    label = row.get(cols.label_field)
    if not isinstance(label, bool):
        shown = "missing" if cols.label_field not in row else f"got {label!r}"
        malformed(f"field {cols.label_field!r} must be true or false ({shown})")
        return None
    weight = row_weight(row, cols.weight_field, malformed)
    if weight is None:
        return None

    raw_prompt, raw_completion = row.get(cols.prompt_field), row.get(cols.completion_field)
    if raw_prompt is None and raw_completion is None:
        messages = row.get(cols.messages_field)
        if not isinstance(messages, list) or not is_conversation(messages):
            malformed(f"needs {cols.prompt_field!r} and {cols.completion_field!r}, or {cols.messages_field!r} "
                      "(a list of {role, content} messages)")
            return None
        split = _split_conversation(messages)
        if split is None:
            report.drop(NO_ASSISTANT, f"{where}: {cols.messages_field!r} does not end with an assistant message")
            return None
        raw_prompt, raw_completion = split
    parsed: list[TextOrMessages] = []
    for name, value in ((cols.prompt_field, raw_prompt), (cols.completion_field, raw_completion)):
        if value is None:
            malformed(f"missing field {name!r}")
            return None
        if not isinstance(value, (str, list)) or (isinstance(value, list) and not is_conversation(value)):
            malformed(f"field {name!r} must be text or a list of {{role, content}} messages")
            return None
        parsed.append(value)
    prompt, completion = parsed
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational: both as messages
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    if _is_empty(completion):
        report.drop(EMPTY_RESPONSE, where)
        return None
    return UnpairedExample(prompt=prompt, completion=completion, label=label, weight=weight)
