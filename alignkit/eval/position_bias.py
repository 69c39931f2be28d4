"""How much a judge's verdicts depend on where the responses stand, and when to stop trusting them.

Every pair is judged twice, the responses swapped. A judge that reads the responses names the same one both
times; a judge that mostly reads the position names the same *letter*. From the 2N verdicts of N pairs:

- ``flip_rate``: of the pairs with both verdicts valid, the share whose preferred response (or tie) changes
  when the order is swapped. 0 for a judge the order never sways, 1 for one that always answers "A",
  1/2 for a coin flip.
- ``first_position_rate``: of the valid verdicts naming a response, the share naming the first one (A).
  Each pair is shown both ways, so a judge without position bias sits at 1/2 whatever the responses.
- ``same_verdict_rate``: the share of valid verdicts giving the most common answer (A, B or tie); near 1
  the judge is near-constant and its verdicts say nothing about the responses.

:func:`judge_warnings` turns these (and the agreement with a dataset's labels, where measured) into the
warnings a report shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from alignkit.eval.judges.base import JudgedPair
from alignkit.eval.stats import Interval

__all__ = ["PositionBias", "judge_warnings", "position_bias"]

# Which response a verdict prefers, by its position: with the policy first, "A" is the policy.
_FIRST = {"A": "policy", "B": "baseline", "tie": "tie"}
_SECOND = {"A": "baseline", "B": "policy", "tie": "tie"}


@dataclass(frozen=True)
class PositionBias:
    """Position bias of a judge over N judged pairs (see the module docstring).

    Attributes:
        pairs: pairs whose two verdicts are both valid (what ``flip_rate`` is over).
        verdicts: valid verdicts (what ``same_verdict_rate`` is over).
        flip_rate: share of ``pairs`` whose preferred response changes with the order; None without any.
        first_position_rate: share of valid A/B verdicts naming A; None without any.
        same_verdict_rate: share of valid verdicts giving ``most_common``; None without any.
        most_common: the most common valid answer ("A", "B" or "tie").
    """

    pairs: int
    verdicts: int
    flip_rate: float | None
    first_position_rate: float | None
    same_verdict_rate: float | None
    most_common: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_bias(pairs: Sequence[JudgedPair]) -> PositionBias:
    """The position bias of the verdicts of ``pairs`` (any baseline, the agreement check included)."""
    both = [(p.policy_first.choice, p.policy_second.choice) for p in pairs
            if p.policy_first.valid and p.policy_second.valid]
    flips = sum(_FIRST[str(a)] != _SECOND[str(b)] for a, b in both)
    letters = Counter(str(v.choice) for p in pairs for v in (p.policy_first, p.policy_second) if v.valid)
    verdicts = sum(letters.values())
    named = letters["A"] + letters["B"]
    most_common, count = letters.most_common(1)[0] if letters else (None, 0)
    return PositionBias(
        pairs=len(both),
        verdicts=verdicts,
        flip_rate=flips / len(both) if both else None,
        first_position_rate=letters["A"] / named if named else None,
        same_verdict_rate=count / verdicts if verdicts else None,
        most_common=most_common,
    )


def judge_warnings(bias: PositionBias, *, max_flip_rate: float, max_same_verdict_rate: float,
                   agreement: Interval | None = None, mean_probability: bool = False) -> list[str]:
    """Why the judge's verdicts should not be trusted, one sentence each (empty when nothing is wrong).

    Args:
        bias: the judge's position bias over every pair it judged.
        max_flip_rate: warn above this flip rate.
        max_same_verdict_rate: warn at or above this share of one answer.
        agreement: its agreement with the dataset's labels (mean pair score), where measured.
        mean_probability: the win rate came from probabilities averaged over both orders (which removes a
            constant lean towards one position, but not a judge that ignores the responses).
    """
    out: list[str] = []
    after = (" The win rate averages the two orders' probabilities, which cancels a constant lean; check "
             "the agreement with the dataset's labels." if mean_probability else "")
    if bias.same_verdict_rate is not None and bias.same_verdict_rate >= max_same_verdict_rate:
        out.append(f"near-constant judge: {bias.same_verdict_rate:.0%} of its {bias.verdicts} valid verdicts are "
                   f"{bias.most_common!r} whatever the order of the responses (eval.judge.max_same_verdict_rate="
                   f"{max_same_verdict_rate:g}).{after}")
    if bias.flip_rate is not None and bias.flip_rate > max_flip_rate:
        out.append(f"position-biased judge: its verdict flips in {bias.flip_rate:.0%} of {bias.pairs} pairs when "
                   f"the responses swap places (eval.judge.max_flip_rate={max_flip_rate:g}; a coin flip flips "
                   f"50%).{after}")
    if agreement is not None and agreement.low <= 0.5:
        out.append(f"the judge agrees with the dataset's labels {agreement.estimate:.3f} of the time (95% CI "
                   f"{agreement.low:.3f}-{agreement.high:.3f}): not distinguishable from chance (0.5) or worse")
    return out
