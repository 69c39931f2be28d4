"""The judge interface, and the both-orders rule that turns verdicts into a per-pair score.

A judge sees a prompt and two responses labelled A and B and says which is better. Judges (LLMs in
particular) favour a position, so every pair is judged twice, once in each order; the policy's score for
the pair is 1 when both verdicts prefer it, 0 when both prefer the baseline, and 0.5 otherwise
(disagreement, an explicit tie, or a verdict that could not be read).

A judge that gives a probability for each letter (a local model read off its next-token distribution) can
instead be scored by ``pair_rule = "mean_probability"``: the policy's probability of being better is the
mean over both orders, ``(P(A | policy first) + P(B | policy second)) / 2``, so a judge that leans towards
one position by the same amount in both orders is left with what the responses themselves change.

A judge that cannot answer (a server down, hanging or answering garbage) must not pass for a coin-flip:
:func:`check_verdicts` fails the evaluation when more than ``max_invalid_fraction`` of the verdicts are
invalid, or when none is valid, naming how many and the first error.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from alignkit.progress import ProgressFn

__all__ = [
    "DEFAULT_MAX_INVALID_FRACTION",
    "Choice",
    "InvalidVerdictsError",
    "SKIPPED",
    "Judge",
    "JudgedPair",
    "PairRule",
    "Verdict",
    "check_verdicts",
    "judge_pairs",
    "pair_score",
]

# The recipe's default for eval.judge.max_invalid_fraction: an evaluation mostly made of invalid verdicts fails.
DEFAULT_MAX_INVALID_FRACTION = 0.5
# How the error text of a verdict starts when the judge did not ask for it, the evaluation having failed already.
SKIPPED = "not asked:"

# "A" / "B": that response is better; "tie": judged equal; None: no usable verdict.
Choice = Literal["A", "B", "tie"] | None
# How a pair's two verdicts make its score: both must agree, or the mean of the two orders' probabilities.
PairRule = Literal["agree", "mean_probability"]

# A pair whose mean probability is this close to 1/2 is a tie. A judge that ignores the responses gives the
# same margin in both orders up to the float32 rounding of its two log-softmax passes (a few ulps of a
# log-prob of order 1, ~1e-6), which moves p by at most a quarter of that: without the tolerance such a
# judge scored 0 or 1 depending on the CPU's summation order instead of 1/2.
PROBABILITY_TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Verdict:
    """One judgement of (prompt, A, B).

    Attributes:
        choice: "A", "B", "tie", or None when the judge gave no usable answer.
        raw: the judge's answer as it came (text, or a short description of the scores compared).
        margin: how strongly A was preferred, when the judge has a number for it (log-prob or reward
            difference, A minus B); None otherwise.
        error: why there is no verdict (transport failure, unparseable text), else None.
        cached: whether the verdict was read from a cache instead of asked for.
    """

    choice: Choice
    raw: str = ""
    margin: float | None = None
    error: str | None = None
    cached: bool = False

    @property
    def valid(self) -> bool:
        return self.choice is not None


class InvalidVerdictsError(ValueError):
    """Too many verdicts without a usable answer for the win rate to mean anything.

    Attributes:
        invalid: invalid verdicts.
        total: verdicts asked for.
        first_error: the first invalid verdict's error text.
    """

    def __init__(self, message: str, *, invalid: int, total: int, first_error: str | None) -> None:
        super().__init__(message)
        self.invalid = invalid
        self.total = total
        self.first_error = first_error


class Judge(ABC):
    """Compares two responses to one prompt.

    Subclasses implement :meth:`compare`; those that can batch (a local model, a pool of HTTP requests)
    also override :meth:`compare_many`.
    """

    name: str = "judge"
    # "mean_probability" only for judges whose margin is log P(A) - log P(B).
    pair_rule: PairRule = "agree"

    @abstractmethod
    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        """Which of ``response_a`` (A) and ``response_b`` (B) answers ``prompt`` better."""

    def compare_many(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> list[Verdict]:
        """Verdicts for (prompt, A, B) triples, in order; ``progress(done, total)`` as comparisons finish."""
        verdicts = []
        for p, a, b in items:
            verdicts.append(self.compare(p, a, b))
            if progress is not None:
                progress(len(verdicts), len(items))
        return verdicts

    def describe(self) -> dict[str, Any]:
        """What judged, for the report (never secrets)."""
        return {"name": self.name}


def pair_score(policy_first: Verdict, policy_second: Verdict) -> float:
    """The policy's score for one pair from its two verdicts.

    Args:
        policy_first: verdict with the policy's response as A.
        policy_second: verdict with the policy's response as B.

    Returns:
        1.0 if both prefer the policy, 0.0 if both prefer the baseline, else 0.5.
    """
    first = {"A": 1.0, "B": 0.0}.get(policy_first.choice or "", 0.5)
    second = {"B": 1.0, "A": 0.0}.get(policy_second.choice or "", 0.5)
    return first if first == second else 0.5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass
class JudgedPair:
    """One prompt's policy and baseline responses with both verdicts and the resulting score.

    Attributes:
        rule: how the two verdicts make the score (see the module docstring).
    """

    prompt: str
    policy: str
    baseline: str
    policy_first: Verdict
    policy_second: Verdict
    rule: PairRule = "agree"

    @property
    def policy_probability(self) -> float | None:
        """Under ``mean_probability``: (P(A | policy first) + P(B | policy second)) / 2, with P(A) the
        probability of "A" among the two letters, sigmoid(log P(A) - log P(B)); else None."""
        first, second = self.policy_first, self.policy_second
        if self.rule != "mean_probability" or first.margin is None or second.margin is None:
            return None
        if not (first.valid and second.valid):
            return None
        return 0.5 * (_sigmoid(first.margin) + _sigmoid(-second.margin))

    @property
    def score(self) -> float:
        if self.rule == "mean_probability":
            p = self.policy_probability
            return 0.5 if p is None or abs(p - 0.5) <= PROBABILITY_TIE_TOLERANCE else float(p > 0.5)
        return pair_score(self.policy_first, self.policy_second)

    @property
    def consistent(self) -> bool:
        """Both verdicts valid and naming the same response (or both a tie): the order changed nothing."""
        return (self.policy_first.choice, self.policy_second.choice) in (("A", "B"), ("B", "A"), ("tie", "tie"))

    @property
    def invalid(self) -> int:
        """Verdicts of this pair without a usable answer (0, 1 or 2)."""
        return int(not self.policy_first.valid) + int(not self.policy_second.valid)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "prompt": self.prompt,
            "policy": self.policy,
            "baseline": self.baseline,
            "score": self.score,
            "policy_first": asdict(self.policy_first),
            "policy_second": asdict(self.policy_second),
        }
        if self.policy_probability is not None:
            out["policy_probability"] = self.policy_probability
        return out


def check_verdicts(verdicts: Sequence[Verdict], max_invalid_fraction: float) -> None:
    """Fail when the verdicts cannot support a win rate.

    Args:
        verdicts: every verdict of an evaluation.
        max_invalid_fraction: the largest share of invalid verdicts tolerated, in [0, 1].

    Raises:
        InvalidVerdictsError: more than ``max_invalid_fraction`` of the verdicts are invalid, or none is
            valid (whatever the fraction: a win rate no verdict supports is never reported).
    """
    if not 0 <= max_invalid_fraction <= 1:
        raise ValueError(f"max_invalid_fraction must lie in [0, 1], got {max_invalid_fraction}")
    invalid = [v for v in verdicts if not v.valid]
    total = len(verdicts)
    if not total or (len(invalid) <= max_invalid_fraction * total and len(invalid) < total):
        return
    # The first error a judge actually met, not the note on a comparison skipped after the limit was passed.
    errors = [v.error for v in invalid if v.error and not v.error.startswith(SKIPPED)] or \
        [v.error for v in invalid if v.error]
    first = errors[0] if errors else "no error text"
    skipped = sum(1 for v in invalid if (v.error or "").startswith(SKIPPED))
    note = f" ({skipped} of them not asked once the limit was passed)" if skipped else ""
    raise InvalidVerdictsError(
        f"{len(invalid)} of {total} judge verdicts are invalid{note}, more than eval.judge.max_invalid_fraction="
        f"{max_invalid_fraction:g} allows{' (none is valid)' if len(invalid) == total else ''}; no win rate "
        f"is reported. First error: {first}",
        invalid=len(invalid), total=total, first_error=first,
    )


def judge_pairs(
    judge: Judge,
    prompts: Sequence[str],
    policy: Sequence[str],
    baseline: Sequence[str],
    *,
    max_invalid_fraction: float | None = None,
    progress: ProgressFn | None = None,
) -> list[JudgedPair]:
    """Judge every (policy, baseline) pair in both orders, in one batch of 2N comparisons.

    Args:
        judge: any :class:`Judge`.
        prompts: N prompts.
        policy: N responses of the evaluated model.
        baseline: N responses it is compared with.
        max_invalid_fraction: if given, fail (:func:`check_verdicts`) when more than this share of the 2N
            verdicts is invalid, or none is valid.
        progress: called with (comparisons done, 2N) as the judge gets through them (a judge whose
            ``compare_many`` takes no ``progress`` reports once, at the end).

    Returns:
        N judged pairs, in prompt order, scored by the judge's ``pair_rule``.

    Raises:
        InvalidVerdictsError: see ``max_invalid_fraction``.
    """
    if not len(prompts) == len(policy) == len(baseline):
        raise ValueError(
            f"judge_pairs needs as many responses as prompts: {len(prompts)} prompts, "
            f"{len(policy)} policy and {len(baseline)} baseline responses"
        )
    items = [(p, x, y) for p, x, y in zip(prompts, policy, baseline, strict=True)]
    items += [(p, y, x) for p, x, y in zip(prompts, policy, baseline, strict=True)]
    if progress is not None and "progress" in inspect.signature(judge.compare_many).parameters:
        verdicts = judge.compare_many(items, progress=progress)
    else:
        verdicts = judge.compare_many(items)
        if progress is not None:
            progress(len(verdicts), len(items))
    if len(verdicts) != len(items):
        raise RuntimeError(f"{type(judge).__name__} returned {len(verdicts)} verdicts for {len(items)} comparisons")
    if max_invalid_fraction is not None:
        check_verdicts(verdicts, max_invalid_fraction)
    n = len(prompts)
    return [
        JudgedPair(prompts[i], policy[i], baseline[i], verdicts[i], verdicts[n + i], rule=judge.pair_rule)
        for i in range(n)
    ]
