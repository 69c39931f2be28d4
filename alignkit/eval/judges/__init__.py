"""Pairwise judges: which of two responses to a prompt is better.

- :class:`~alignkit.eval.judges.local.LocalJudge`: a local causal LM, verdict from next-token log-probs.
- :class:`~alignkit.eval.judges.openai_compat.OpenAIJudge`: any OpenAI-compatible chat-completions server.
- :class:`~alignkit.eval.judges.reward.RewardJudge`: the higher reward wins.

:func:`judge_pairs` judges each pair in both orders (and, given ``max_invalid_fraction``, fails when too
many verdicts are invalid: :class:`InvalidVerdictsError`); :func:`build_judge` makes a judge from the
recipe's ``eval.judge`` section through the judge registry (:mod:`alignkit.eval.judges.registry`), where
each judge module registers its builder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

if TYPE_CHECKING:
    from alignkit.eval.judges.base import (
        DEFAULT_MAX_INVALID_FRACTION,
        InvalidVerdictsError,
        Judge,
        JudgedPair,
        Verdict,
        check_verdicts,
        judge_pairs,
        pair_score,
    )
    from alignkit.eval.judges.prompt import judge_messages, parse_verdict
    from alignkit.eval.judges.registry import JUDGES, build_judge, register_judge

__all__ = ["DEFAULT_MAX_INVALID_FRACTION", "JUDGES", "InvalidVerdictsError", "Judge", "JudgedPair", "Verdict",
           "build_judge", "check_verdicts", "judge_messages", "judge_pairs", "pair_score", "parse_verdict",
           "register_judge"]

__getattr__ = lazy_exports(__name__, {
    "base": ("DEFAULT_MAX_INVALID_FRACTION", "InvalidVerdictsError", "Judge", "JudgedPair", "Verdict", "check_verdicts", "judge_pairs", "pair_score"),
    "prompt": ("judge_messages", "parse_verdict"),
    "registry": ("JUDGES", "build_judge", "register_judge"),
}, on_first_use=("local", "openai_compat", "reward",))
