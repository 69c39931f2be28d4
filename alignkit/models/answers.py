"""Final answers in completions: where they are written and how two of them compare.

Pure text functions, no model and no optional package: the verifiable rewards
(:mod:`alignkit.models.verifiable`) read an answer with one of the :data:`EXTRACTORS` and compare it to the
reference answer of the example's prompt.

Where an answer is written (``extract``):

- ``gsm8k``: after ``####`` (GSM8K's reference format), up to the end of the line;
- ``boxed``: inside ``\\boxed{...}`` (braces nested);
- ``tags``: inside ``<answer>...</answer>`` (reasoning-gym's convention);
- ``last_number``: the last number in the text (``1,234``, ``-3.5``, ``2/3``);
- ``regex``: the first group of a user's pattern (:func:`extract_regex`).

A completion that writes two *different* answers in the chosen format has no answer (it may not hedge and be
scored on either); the same answer written twice counts once. Text is normalised first (NFKC: full-width
digits are digits; lone surrogates from undecodable bytes become U+FFFD), so no odd character raises.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

__all__ = [
    "EXTRACTORS",
    "MAX_ANSWER_CHARS",
    "answers_equal",
    "clean_text",
    "extract_answer",
    "extract_boxed",
    "extract_gsm8k",
    "extract_last_number",
    "extract_regex",
    "extract_tags",
    "normalise_answer",
]

# Longer answers are compared as text only: numbers this long are not worth a number parse (and Python's int()
# refuses more than 4300 digits), and a symbolic checker could spend seconds on them.
MAX_ANSWER_CHARS = 256

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_GSM8K = re.compile(r"####\s*([^\n#]*)")
_TAGS = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def clean_text(text: str) -> str:
    """``text`` in NFKC form with lone surrogates (undecodable bytes) replaced by U+FFFD."""
    safe = text.encode("utf-8", "replace").decode("utf-8")
    return unicodedata.normalize("NFKC", safe)


def _one(candidates: list[str]) -> str | None:
    """The answer when every candidate normalises to the same one; None for none, or for two that differ."""
    values = {normalise_answer(c) for c in candidates if c.strip()}
    if len(values) != 1:
        return None
    return next(c.strip() for c in candidates if c.strip())


def extract_gsm8k(text: str) -> str | None:
    """The answer after ``####`` (to the end of its line), e.g. ``"... so #### 72"`` -> ``"72"``."""
    return _one([m.group(1) for m in _GSM8K.finditer(clean_text(text))])


def extract_tags(text: str) -> str | None:
    """The answer inside ``<answer>...</answer>``."""
    return _one([m.group(1) for m in _TAGS.finditer(clean_text(text))])


def _boxed_contents(text: str) -> list[str]:
    out = []
    start = text.find("\\boxed{")
    while start != -1:
        i, depth = start + len("\\boxed{"), 1
        begin = i
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # an unclosed box is no answer
            out.append(text[begin:i - 1])
        start = text.find("\\boxed{", i)
    return out


def extract_boxed(text: str) -> str | None:
    """The contents of ``\\boxed{...}``, nested braces kept: ``"\\boxed{\\frac{1}{2}}"`` -> ``"\\frac{1}{2}"``."""
    return _one(_boxed_contents(clean_text(text)))


def extract_last_number(text: str) -> str | None:
    """The last number written in the text (commas of thousands allowed), or None when there is none."""
    numbers = _NUMBER.findall(clean_text(text))
    return numbers[-1].rstrip(".") if numbers else None


def extract_regex(text: str, pattern: str) -> str | None:
    """The first group (or the whole match) of ``pattern``; two different matches are no answer."""
    found = [m.group(1) if m.groups() else m.group(0) for m in re.finditer(pattern, clean_text(text))]
    return _one(found)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": extract_gsm8k,
    "boxed": extract_boxed,
    "tags": extract_tags,
    "last_number": extract_last_number,
}


def extract_answer(text: str, how: str, pattern: str | None = None) -> str | None:
    """The answer of ``text`` read the way ``how`` names (a key of :data:`EXTRACTORS`, or ``regex`` with
    ``pattern``).

    Raises:
        ValueError: an unknown ``how``, or ``regex`` without a pattern.
    """
    if how == "regex":
        if not pattern:
            raise ValueError("extract: regex needs a pattern")
        return extract_regex(text, pattern)
    if how not in EXTRACTORS:
        raise ValueError(f"extract: unknown way {how!r}; known: {', '.join([*EXTRACTORS, 'regex'])}")
    return EXTRACTORS[how](text)


def normalise_answer(answer: str) -> str:
    """A canonical form for comparing answers: NFKC, spaces and a trailing full stop dropped, ``$`` and
    thousands commas removed from numbers, and a number written as its exact decimal value (``72.0`` -> ``72``,
    ``1,000`` -> ``1000``). Text that is not a number is lower-cased."""
    text = clean_text(answer).strip().rstrip(".").strip()
    bare = text.replace("$", "").replace(",", "").replace(" ", "")
    if len(bare) <= MAX_ANSWER_CHARS and re.fullmatch(r"-?\d*\.?\d+", bare):
        try:
            value = Decimal(bare)  # exact, and not bound by int()'s 4300-digit limit
        except InvalidOperation:
            return bare
        return format(value.normalize() + 0, "f")  # + 0 turns -0 into 0
    return " ".join(text.lower().split())


def answers_equal(answer: str | None, reference: str) -> bool:
    """Whether ``answer`` is ``reference`` after :func:`normalise_answer` (None, no answer, is never equal)."""
    return answer is not None and normalise_answer(answer) == normalise_answer(reference)
