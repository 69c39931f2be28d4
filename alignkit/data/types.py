"""The records that flow through the data layer: examples, tokenized pairs, and what was dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DataError",
    "DropReport",
    "Message",
    "PreferenceExample",
    "PreparedData",
    "TextOrMessages",
    "TokenizedPair",
    "is_conversation",
]

# One chat message: {"role": "user" | "assistant" | "system", "content": "..."}.
Message = dict[str, str]
# Plain text, or a conversation rendered later with the tokenizer's chat template.
TextOrMessages = str | list[Message]


class DataError(ValueError):
    """Data that cannot be loaded at all (missing file, unreachable hub dataset, bad column names)."""


def is_conversation(value: object) -> bool:
    """True for a list of ``{role, content}`` messages (the conversational form of a text field)."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )


@dataclass
class PreferenceExample:
    """One preference pair, before tokenization.

    Attributes:
        prompt: the context both responses answer. Plain text, or a list of messages.
        chosen: the preferred response (text, or the assistant message(s) that follow the prompt).
        rejected: the dispreferred response, in the same form as ``chosen``.
        weight: per-example weight the trainer multiplies the loss by (1.0 = unweighted).
    """

    prompt: TextOrMessages
    chosen: TextOrMessages
    rejected: TextOrMessages
    weight: float = 1.0

    @property
    def conversational(self) -> bool:
        """Whether any field is a message list (needs a chat template or a plain-text rendering)."""
        return any(is_conversation(v) for v in (self.prompt, self.chosen, self.rejected))


@dataclass
class TokenizedPair:
    """A preference pair as token ids. Response ids exclude the prompt.

    The model input for the chosen side is ``prompt_ids + chosen_ids`` (likewise rejected); the loss
    is taken over the response ids only.

    Attributes:
        prompt_ids: prompt tokens (already left-truncated).
        chosen_ids: chosen response tokens (EOS appended unless truncated away).
        rejected_ids: rejected response tokens.
        weight: per-example loss weight.
        index: position of the example in the list it was tokenized from; stable across runs with the
            same data and tokenizer, so it keys caches such as precomputed reference log-probs.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float
    index: int

    @property
    def chosen_length(self) -> int:
        """Total tokens of prompt + chosen response."""
        return len(self.prompt_ids) + len(self.chosen_ids)

    @property
    def rejected_length(self) -> int:
        """Total tokens of prompt + rejected response."""
        return len(self.prompt_ids) + len(self.rejected_ids)

    @property
    def max_length(self) -> int:
        """The longer of the two sequences (what a batch must be padded to)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


# Reasons used by the built-in sources and the tokenizer. Any other string is allowed too.
EMPTY_RESPONSE = "empty response"
IDENTICAL = "identical chosen and rejected"
PROMPT_MISMATCH = "chosen and rejected do not share the prompt"
PROMPT_TOO_LONG = "prompt too long to keep any response"
MALFORMED = "malformed row"
MULTI_TURN = "multi-turn (single_turn filter)"
NO_ASSISTANT = "no assistant turn"
CHAT_TEMPLATE_PREFIX = "chat template does not extend the prompt"

_MAX_LOCATIONS_SHOWN = 10


@dataclass
class DropReport:
    """Counts of rows that were read and of rows dropped, by reason.

    Attributes:
        seen: rows looked at.
        reasons: reason -> number of rows dropped for it.
        locations: reason -> where the offending rows are (``file:line`` or ``row N``), each with an
            optional detail, for reasons where the location helps the user fix the data.
        truncated: what was cut of rows that were kept, e.g. ``{"prompt cut": 203, "response cut": 41}``
            (a row whose prompt and response were both cut counts under both).
    """

    seen: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    locations: dict[str, list[str]] = field(default_factory=dict)
    truncated: Counter[str] = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        """Total rows dropped, over all reasons."""
        return sum(self.reasons.values())

    @property
    def kept(self) -> int:
        """Rows that survived."""
        return self.seen - self.dropped

    def drop(self, reason: str, where: str | None = None, count: int = 1) -> None:
        """Count ``count`` dropped rows (default one), optionally remembering where it is."""
        self.reasons[reason] += count
        if where is not None:
            self.locations.setdefault(reason, []).append(where)

    def merge(self, other: DropReport, count_seen: bool = True) -> DropReport:
        """Add ``other``'s counts into this report (in place) and return it.

        Args:
            other: a report of other rows (another file or source).
            count_seen: add ``other.seen`` too; False when ``other`` looked at rows this report already
                counted (a later stage of the same rows: use :meth:`then`).
        """
        if count_seen:
            self.seen += other.seen
        self.reasons.update(other.reasons)
        self.truncated.update(other.truncated)
        for reason, where in other.locations.items():
            self.locations.setdefault(reason, []).extend(where)
        return self

    def then(self, later: DropReport) -> DropReport:
        """Add the drops of a later stage over rows this report kept (e.g. tokenization after loading).

        ``seen`` stays the number of raw rows, so ``kept`` is what survived both stages.
        """
        return self.merge(later, count_seen=False)

    def summary(self) -> str:
        """A short human-readable account, e.g. for the CLI.

        Example::

            kept 2,306 of 2,312 rows (prompt cut 203, response cut 41); dropped 6:
              4  chosen and rejected do not share the prompt
              2  malformed row (data.jsonl:17: invalid JSON, data.jsonl:40: missing field 'chosen')
        """
        head = f"kept {self.kept:,} of {self.seen:,} rows"
        if self.truncated:
            head += " (" + ", ".join(f"{what} {n:,}" for what, n in sorted(self.truncated.items())) + ")"
        if not self.reasons:
            return head
        lines = [f"{head}; dropped {self.dropped:,}:"]
        width = len(f"{max(self.reasons.values()):,}")
        for reason, count in self.reasons.most_common():
            line = f"  {count:>{width},}  {reason}"
            where = self.locations.get(reason)
            if where:
                shown = ", ".join(where[:_MAX_LOCATIONS_SHOWN])
                more = len(where) - _MAX_LOCATIONS_SHOWN
                line += f" ({shown}{f', and {more} more' if more > 0 else ''})"
            lines.append(line)
        return "\n".join(lines)


@dataclass
class PreparedData:
    """Train and test items, the examples they came from, and what was dropped on the way.

    The items are :class:`TokenizedPair` s, or ``TokenizedKWay`` items for a K-way source (see
    :mod:`alignkit.data.kway`); the examples are :class:`PreferenceExample` s or ``KWayExample`` s.
    ``index`` of a train pair is its position in ``train_examples``; of a test pair,
    ``len(train_examples)`` + its position in ``test_examples``: unique over both splits.
    """

    train: list[Any]
    test: list[Any]
    train_examples: list[Any]
    test_examples: list[Any]
    load_report: DropReport = field(default_factory=DropReport)
    train_report: DropReport = field(default_factory=DropReport)
    test_report: DropReport = field(default_factory=DropReport)

    @property
    def report(self) -> DropReport:
        """One report over the whole way: raw rows seen, and every drop of loading and tokenizing."""
        out = DropReport().merge(self.load_report)
        return out.then(self.train_report).then(self.test_report)

    def summary(self) -> str:
        """Rows read and dropped while loading, then while tokenizing each split."""
        return "\n".join([
            f"loading: {self.load_report.summary()}",
            f"train tokenization: {self.train_report.summary()}",
            f"test tokenization: {self.test_report.summary()}",
        ])
