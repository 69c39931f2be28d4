"""Cutting a prompt and its responses to the length limits (``data.prompt_truncation``), and counting the cuts.

Two modes decide *when* a prompt is cut to ``max_prompt_length`` (always keeping its end, the latest turns,
with BOS in front):

- ``always``: whenever it is longer than ``max_prompt_length``, even if prompt and responses would fit in
  ``max_length``.
- ``when_needed``: only when prompt + the longest response (EOS included) exceed ``max_length``, the rule of
  the reference DPO implementation (eric-mitchell/direct-preference-optimization); a pair that fits is
  kept whole.

In both, responses are then cut (keeping their start, losing EOS) to ``max_length`` − prompt tokens. The
reference implementation cuts them to ``max_length − max_prompt_length`` even when the prompt is shorter;
this keeps the tokens that fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from alignkit.data.types import PROMPT_TOO_LONG, DropReport

__all__ = [
    "IDENTICAL_AFTER_TRUNCATION",
    "PROMPT_CUT",
    "PROMPT_TRUNCATION_MODES",
    "PromptTruncation",
    "RESPONSE_CUT",
    "TruncatedPair",
    "count_cuts",
    "truncate_pair",
    "truncation_counts",
]

PromptTruncation = Literal["always", "when_needed"]
PROMPT_TRUNCATION_MODES: tuple[PromptTruncation, ...] = ("always", "when_needed")

IDENTICAL_AFTER_TRUNCATION = "chosen and rejected identical after truncation"
# Keys of DropReport.truncated: what the limits cut of a row that was kept.
PROMPT_CUT = "prompt cut"
RESPONSE_CUT = "response cut"


class TruncatedPair(NamedTuple):
    """A prompt and its responses within the limits, and what was cut to get there.

    Attributes:
        prompt_ids: BOS (when given) + the prompt's last tokens.
        responses: each response's first tokens, EOS appended when it was not cut.
        prompt_cut: whether prompt tokens were dropped.
        response_cut: whether any response lost tokens (its EOS included).
    """

    prompt_ids: list[int]
    responses: list[list[int]]
    prompt_cut: bool
    response_cut: bool


def truncate_pair(
    prompt_ids: list[int],
    responses: Sequence[list[int]],
    max_length: int,
    max_prompt_length: int,
    eos_token_id: int | None,
    bos_token_id: int | None = None,
    mode: PromptTruncation = "always",
) -> TruncatedPair | None:
    """Cut one prompt and its responses (the same prompt for all of them) to the limits.

    Args:
        prompt_ids: prompt tokens without BOS.
        responses: response tokens without EOS (one for SFT, two for a pair, K for a K-way example).
        max_length: most tokens of prompt + one response.
        max_prompt_length: most prompt tokens (BOS included) once the prompt is cut.
        eos_token_id: appended to each response; None appends nothing.
        bos_token_id: put in front of the prompt; None for tokenizers that add no BOS.
        mode: when the prompt is cut (see the module docstring).

    Returns:
        The cut pair, or None when no response token fits (only when ``max_prompt_length >= max_length``).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in PROMPT_TRUNCATION_MODES:
        raise ValueError(f"prompt_truncation must be one of {', '.join(PROMPT_TRUNCATION_MODES)}, got {mode!r}")
    head = [bos_token_id] if bos_token_id is not None else []
    full = [ids + [eos_token_id] if eos_token_id is not None and (not ids or ids[-1] != eos_token_id) else list(ids)
            for ids in responses]
    longest = max((len(ids) for ids in full), default=0)
    if mode == "when_needed" and len(head) + len(prompt_ids) + longest <= max_length:
        return TruncatedPair(head + prompt_ids, full, False, False)
    keep = min(max(max_prompt_length - len(head), 0), len(prompt_ids))
    prompt = head + prompt_ids[len(prompt_ids) - keep:]
    budget = max_length - len(prompt)
    if budget < 1:
        return None
    cut = [ids[:budget] for ids in full]
    return TruncatedPair(prompt, cut, keep < len(prompt_ids), any(len(c) < len(f) for c, f in zip(cut, full, strict=True)))


def count_cuts(report: DropReport, pair: TruncatedPair) -> None:
    """Count what the limits cut of a kept pair into ``report.truncated``."""
    if pair.prompt_cut:
        report.truncated[PROMPT_CUT] += 1
    if pair.response_cut:
        report.truncated[RESPONSE_CUT] += 1


def truncation_counts(report: DropReport) -> dict[str, Any]:
    """How the length limits changed a tokenized split, for report.json.

    Returns:
        ``{"kept", "prompt_cut", "response_cut", "dropped"}``: pairs kept, kept pairs whose prompt / some
        response was cut, and pairs dropped because of the limits, by reason.
    """
    dropped = {r: report.reasons[r] for r in (PROMPT_TOO_LONG, IDENTICAL_AFTER_TRUNCATION) if report.reasons[r]}
    return {"kept": report.kept, "prompt_cut": report.truncated[PROMPT_CUT],
            "response_cut": report.truncated[RESPONSE_CUT], "dropped": dropped}
