"""How often a judge agrees with a reference judgement: on a preference data set, its own label.

The judge compares each held-out pair's chosen response with its rejected one, in both orders, scored as
a win rate is (1: chosen preferred in both orders, 0: rejected in both, 1/2 otherwise). The agreement is
the mean score with a bootstrap 95% interval; a judge that ignores the responses scores 1/2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.eval.judges.base import Judge, JudgedPair, judge_pairs
from alignkit.eval.position_bias import position_bias
from alignkit.eval.stats import bootstrap_ci
from alignkit.progress import ProgressFn

__all__ = ["LabelledPair", "judge_agreement", "labelled_pairs"]


@dataclass(frozen=True)
class LabelledPair:
    """A prompt and two responses, ``preferred`` labelled better than ``other`` by the data set."""

    prompt: str
    preferred: str
    other: str


def labelled_pairs(examples: Sequence[Any]) -> list[LabelledPair]:
    """The text pairs of held-out examples (one per distinct prompt, in order), as labelled by the data.

    Examples in message form, without a rejected response (K-way, unpaired) or with identical responses
    are left out: they hold no pairwise label a judge can be checked against.
    """
    out: dict[str, LabelledPair] = {}
    for ex in examples:
        prompt, chosen, rejected = (getattr(ex, "prompt", None), getattr(ex, "chosen", None),
                                    getattr(ex, "rejected", None))
        if not (isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str)):
            continue
        if chosen.strip() != rejected.strip():
            out.setdefault(prompt, LabelledPair(prompt, chosen.strip(), rejected.strip()))
    return list(out.values())


def judge_agreement(judge: Judge, pairs: Sequence[LabelledPair], *, max_invalid_fraction: float | None = None,
                    seed: int = 0, progress: ProgressFn | None = None) -> tuple[dict[str, Any], list[JudgedPair]]:
    """The judge's agreement with the labels of ``pairs``, and the judged pairs (the label's side as "policy");
    ``progress`` as in :func:`~alignkit.eval.judges.base.judge_pairs`.

    Returns:
        The report entry: ``n``, ``agreement`` (interval), ``agree_both_orders`` and ``disagree_both_orders``
        (shares of pairs), ``position_bias`` of these verdicts; and the judged pairs.

    Raises:
        ValueError: no pairs. InvalidVerdictsError: see :func:`alignkit.eval.judges.base.check_verdicts`.
    """
    if not pairs:
        raise ValueError("no labelled pairs to measure the judge's agreement on")
    judged = judge_pairs(judge, [p.prompt for p in pairs], [p.preferred for p in pairs], [p.other for p in pairs],
                         max_invalid_fraction=max_invalid_fraction, progress=progress)
    scores = [p.score for p in judged]
    return {
        "n": len(judged),
        "agreement": bootstrap_ci(scores, seed=seed).to_dict(),
        "agree_both_orders": sum(s == 1 for s in scores) / len(scores),
        "disagree_both_orders": sum(s == 0 for s in scores) / len(scores),
        "position_bias": position_bias(judged).to_dict(),
    }, judged
