"""A reward as the pairwise judge: the response with the higher reward wins, equal rewards tie.

Two sources: a registered reward function (``texts -> rewards``, e.g. ``vader_sentiment``, which scores the
response text alone) or an alignkit reward model (a sequence-classification folder, which scores the
prompt and response rendered as in training). Each distinct text is scored once, so judging a pair in
both orders costs no more than one order. A reward that is not a finite number gives an invalid verdict
(not a tie).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.data.render import render_example
from alignkit.data.types import PreferenceExample
from alignkit.eval.judges.base import Choice, Judge, Verdict
from alignkit.eval.judges.registry import register_judge
from alignkit.models.logps import reward_scores
from alignkit.models.padding import pad_token_rows
from alignkit.models.rewards import RewardFn, resolve_reward
from alignkit.progress import ProgressFn

__all__ = ["RewardJudge", "build_reward_judge", "reward_model_scorer"]

# scorer([(prompt, response), ...]) -> one reward each.
Scorer = Callable[[list[tuple[str, str]]], list[float]]


def reward_model_scorer(folder: str | Path, *, batch_size: int = 8, device: str | torch.device = "cpu") -> Scorer:
    """A scorer from a reward-model folder (``save_pretrained`` of a one-label sequence classifier).

    The prompt and response are rendered as the data layer renders a training pair (chat template when
    the tokenizer has one) and the score is read at the last real token.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"eval.judge.model: {folder} is not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, use_safetensors=True).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    use_template = bool(getattr(tokenizer, "chat_template", None))

    @torch.inference_mode()
    def score(items: list[tuple[str, str]]) -> list[float]:
        texts = []
        for prompt, response in items:
            rendered = render_example(PreferenceExample(prompt, response, response), tokenizer, use_template,
                                      with_rejected=False)
            prompt_text, (response_text,) = rendered if rendered else (prompt, [response])
            texts.append(prompt_text + response_text)
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            rows = [tokenizer(t, add_special_tokens=not use_template)["input_ids"] for t in texts[start : start + batch_size]]
            ids, mask = pad_token_rows(rows, int(pad))
            out += reward_scores(model, ids.to(device), mask.to(device)).tolist()
        return out

    return score


class RewardJudge(Judge):
    """Prefers the response with the higher reward.

    Args:
        reward: a registered reward name or a ``texts -> rewards`` function (scores the response only).
        scorer: instead of ``reward``, a ``[(prompt, response)] -> rewards`` function, e.g.
            :func:`reward_model_scorer`.
        name: shown in the report.
    """

    name = "reward"

    def __init__(self, reward: str | RewardFn | None = None, *, scorer: Scorer | None = None,
                 name: str | None = None) -> None:
        if (reward is None) == (scorer is None):
            raise ValueError("RewardJudge needs exactly one of reward= or scorer=")
        if reward is not None:
            reward_name, fn = resolve_reward(reward)
            self.reward_name = reward_name
            self._score: Scorer = lambda items: fn([response for _, response in items])
        else:
            assert scorer is not None  # exactly one of the two, checked above
            self.reward_name = name or "reward_model"
            self._score = scorer

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "reward": self.reward_name}

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b)])[0]

    def compare_many(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> list[Verdict]:
        """Each distinct (prompt, response) scored once, in one call; ``progress`` once, at the end."""
        unique = list(dict.fromkeys(pair for p, a, b in items for pair in ((p, a), (p, b))))
        scores = self._score(unique)
        if len(scores) != len(unique):
            raise ValueError(f"reward {self.reward_name!r} returned {len(scores)} scores for {len(unique)} texts")
        by_pair = dict(zip(unique, (float(s) for s in scores), strict=True))
        verdicts = []
        for p, a, b in items:
            ra, rb = by_pair[(p, a)], by_pair[(p, b)]
            if not (math.isfinite(ra) and math.isfinite(rb)):  # NaN would compare as a tie
                verdicts.append(Verdict(None, raw=f"reward(A)={ra} reward(B)={rb}", error="reward is not a finite number"))
                continue
            choice: Choice = "A" if ra > rb else "B" if rb > ra else "tie"
            verdicts.append(Verdict(choice, raw=f"reward(A)={ra:.4f} reward(B)={rb:.4f}", margin=ra - rb))
        if progress is not None:
            progress(len(verdicts), len(items))
        return verdicts


@register_judge("reward")
def build_reward_judge(cfg: Any, *, device: str = "cpu", **_: Any) -> RewardJudge:
    """A reward judge from an ``eval.judge`` section: a registered reward, or a reward-model folder."""
    if cfg.reward is not None:
        return RewardJudge(cfg.reward)
    return RewardJudge(scorer=reward_model_scorer(cfg.model, batch_size=cfg.batch_size, device=device),
                       name=str(cfg.model))
