"""Pairwise judges: which of two responses to a prompt is better.

- :class:`~alignkit.eval.judges.local.LocalJudge`: a local causal LM, verdict from next-token log-probs.
- :class:`~alignkit.eval.judges.openai_compat.OpenAIJudge`: any OpenAI-compatible chat-completions server.
- :class:`~alignkit.eval.judges.reward.RewardJudge`: the higher reward wins.

:func:`judge_pairs` judges each pair in both orders; :func:`build_judge` makes a judge from the recipe's
``eval.judge`` section. Submodules are imported on use, so this package loads no torch by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.eval.judges.base import Judge, JudgedPair, Verdict, judge_pairs, pair_score
from alignkit.eval.judges.prompt import judge_messages, parse_verdict

if TYPE_CHECKING:
    from alignkit.eval.config import JudgeConfig

__all__ = ["Judge", "JudgedPair", "Verdict", "build_judge", "judge_messages", "judge_pairs", "pair_score",
           "parse_verdict"]


def build_judge(cfg: JudgeConfig, *, cache_dir: str | Path | None = None, device: str = "cpu") -> Judge | None:
    """The judge an ``eval.judge`` section describes (None for ``kind: none``).

    Args:
        cfg: the section.
        cache_dir: where the HTTP judge keeps its verdicts; default ``<alignkit cache>/judge_verdicts``.
        device: where a local judge or reward model runs.
    """
    if cfg.kind == "none":
        return None
    if cfg.kind == "reward":
        from alignkit.eval.judges.reward import RewardJudge, reward_model_scorer

        if cfg.reward is not None:
            return RewardJudge(cfg.reward)
        return RewardJudge(scorer=reward_model_scorer(cfg.model, batch_size=cfg.batch_size, device=device),
                           name=str(cfg.model))
    if cfg.kind == "openai":
        from alignkit.cache import cache_dir as default_cache_dir
        from alignkit.eval.judges.openai_compat import OpenAIJudge

        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("judge_verdicts")
        return OpenAIJudge(
            cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, max_concurrency=cfg.max_concurrency,
            timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
            max_tokens=cfg.max_tokens, temperature=cfg.temperature,
            cache_path=folder / "verdicts.jsonl" if cfg.cache else None,
        )
    if cfg.kind == "local":
        from alignkit.eval.judges.local import LocalJudge
        from alignkit.models.config import ModelConfig
        from alignkit.models.load import load_causal_lm, load_tokenizer

        model_cfg = ModelConfig(name_or_path=cfg.model, tokenizer=cfg.tokenizer)
        model = load_causal_lm(model_cfg, device).requires_grad_(False).eval()
        return LocalJudge(model, load_tokenizer(model_cfg), batch_size=cfg.batch_size,
                          max_prompt_tokens=cfg.max_prompt_tokens, name=cfg.model)
    raise ValueError(f"eval.judge.kind: unknown judge {cfg.kind!r}")
