"""Judged evaluation of a policy against a baseline, for the end of a run and for `alignkit eval RUN_DIR`.

:func:`judge_run` samples one completion per held-out prompt from the policy and from the baseline (the
reference model, or the dataset's chosen response), judges each pair in both orders and summarizes the
scores (:mod:`alignkit.eval.winrate`). :func:`evaluate_heldout` runs the evaluation a recipe's ``eval:``
section asks for (reward versus KL, the judge) and returns the report sections. Reloading a finished run
for `alignkit eval RUN_DIR` and writing its report are the command's (:mod:`alignkit.commands.eval`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from alignkit.eval.before_after import evaluate_before_after
from alignkit.eval.config import EvalConfig
from alignkit.eval.judges import DEFAULT_MAX_INVALID_FRACTION, Judge, JudgedPair, build_judge, judge_pairs
from alignkit.eval.kl import ReferenceFn
from alignkit.eval.winrate import win_rate_report
from alignkit.models.generate import format_prompt, generate_completions, uses_chat_template

__all__ = ["evaluate_heldout", "fitting_prompts", "judge_run"]


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fitting_prompts(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int]:
    """The prompts whose tokens plus ``max_new_tokens`` fit the model's context, and how many did not."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        return prompts, 0
    chat = uses_chat_template(tokenizer)
    kept = [p for p in prompts if len(format_prompt(tokenizer, p, chat)) + max_new_tokens <= context]
    return kept, len(prompts) - len(kept)


def judge_run(
    cfg: EvalConfig,
    policy: nn.Module,
    reference: ReferenceFn | None,
    tokenizer,
    prompts: Sequence[str],
    chosen_by_prompt: Mapping[str, str] | None = None,
    *,
    console: Console | None = None,
    judge: Judge | None = None,
    device: str = "cpu",
    pairs_path: str | Path | None = None,
) -> dict[str, Any]:
    """Win rate of ``policy`` against ``cfg.baseline`` on up to ``cfg.num_prompts`` prompts.

    Args:
        cfg: the recipe's eval section (sampling settings, ``judge``, ``baseline``).
        policy: the tuned model.
        reference: zero-argument callable whose context yields the reference model (see
            :mod:`alignkit.eval.kl`); needed when ``cfg.baseline == "reference"``.
        tokenizer: shared by policy and reference.
        prompts: held-out prompts.
        chosen_by_prompt: prompt -> the dataset's chosen response; needed when ``cfg.baseline == "chosen"``.
        console: progress messages (stderr when None).
        judge: a ready judge; default: :func:`alignkit.eval.judges.build_judge` of ``cfg.judge``.
        device: where a judge built here runs.
        pairs_path: if given, every judged pair with both verdicts is written there as JSON lines.

    Returns:
        The report.json ``judge`` section: judge description, baseline, counts, win rate and
        length-controlled win rate with 95% intervals, tie rate, lengths, examples. Empty when
        ``cfg.judge.kind`` is ``none``.

    Raises:
        InvalidVerdictsError: more than ``cfg.judge.max_invalid_fraction`` of the verdicts are invalid, or
            none is valid (the judge server down, hanging, or answering something else); nothing is reported.
        JudgeRequestError: the HTTP judge met an error that every request would meet (a 4xx, a redirect).
    """
    console = console or Console(stderr=True)
    judge = judge or build_judge(cfg.judge, device=device)
    if judge is None:
        return {}
    start = time.perf_counter()
    chosen = chosen_by_prompt or {}
    prompts, too_long = _judged_prompts(cfg, policy, tokenizer, prompts, chosen)
    policy_texts, baseline_texts = _sample_both_sides(cfg, policy, reference, tokenizer, prompts, chosen, console)
    console.print(f"judge: {2 * len(prompts)} comparisons with {judge.describe()}")
    # Fails (InvalidVerdictsError, a ValueError) rather than report a win rate the verdicts do not support.
    pairs = judge_pairs(judge, prompts, policy_texts, baseline_texts,
                        max_invalid_fraction=getattr(cfg.judge, "max_invalid_fraction", DEFAULT_MAX_INVALID_FRACTION))
    section = _judge_section(cfg, judge, tokenizer, pairs, policy_texts, baseline_texts, skipped_long_prompts=too_long)
    if pairs_path is not None:
        Path(pairs_path).write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    return {**section, "seconds": time.perf_counter() - start}


def _judged_prompts(cfg: EvalConfig, policy: nn.Module, tokenizer, prompts: Sequence[str],
                    chosen: Mapping[str, str]) -> tuple[list[str], int]:
    """Up to ``cfg.num_prompts`` prompts that fit the context (and have a chosen response when that is the
    baseline), and how many did not fit."""
    kept = list(prompts)
    if cfg.baseline == "chosen":
        kept = [p for p in kept if p in chosen]
        if not kept:
            raise ValueError("eval.baseline is 'chosen' but no held-out prompt has a chosen response "
                             "(generated sentiment data has none: use baseline 'reference')")
    kept, too_long = fitting_prompts(policy, tokenizer, kept, cfg.max_new_tokens)
    kept = kept[: cfg.num_prompts]
    if not kept:
        raise ValueError(f"no held-out prompts to judge on ({too_long} do not fit the model's context with "
                         f"eval.max_new_tokens={cfg.max_new_tokens}; data.test_size is 0?)")
    return kept, too_long


def _sample_both_sides(cfg: EvalConfig, policy: nn.Module, reference: ReferenceFn | None, tokenizer,
                       prompts: list[str], chosen: Mapping[str, str], console: Console) -> tuple[list[str], list[str]]:
    """One completion per prompt from the policy, and the baseline's: the chosen response or a reference sample."""
    sampling = cfg.sampling.but(samples_per_prompt=1)  # one completion per prompt and side
    console.print(f"judge: sampling the policy on {len(prompts)} prompts")
    policy_texts = [c.text for c in generate_completions(policy, tokenizer, prompts, sampling)]
    if cfg.baseline == "chosen":
        return policy_texts, [chosen[p] for p in prompts]
    if reference is None:
        raise ValueError("eval.baseline is 'reference' but no reference model was given")
    console.print("judge: sampling the reference")
    with reference() as reference_model:
        baseline_texts = [c.text for c in generate_completions(reference_model, tokenizer, prompts, sampling)]
    return policy_texts, baseline_texts


def _judge_section(cfg: EvalConfig, judge: Judge, tokenizer, pairs: Sequence[JudgedPair], policy_texts: list[str],
                   baseline_texts: list[str], *, skipped_long_prompts: int) -> dict[str, Any]:
    """The report.json ``judge`` section of the judged ``pairs`` (see :func:`judge_run`), but its ``seconds``."""
    report = win_rate_report(
        [p.score for p in pairs],
        [_token_count(tokenizer, t) for t in policy_texts],
        [_token_count(tokenizer, t) for t in baseline_texts],
        invalid_verdicts=sum(p.invalid for p in pairs),
        length_unit="tokens",
        seed=cfg.seed,
    )
    return {
        "judge": judge.describe(),
        "baseline": cfg.baseline,
        **report.to_dict(),
        "order_consistency": sum(p.consistent for p in pairs) / len(pairs),
        "skipped_long_prompts": skipped_long_prompts,
        "cached_verdicts": sum(int(p.policy_first.cached) + int(p.policy_second.cached) for p in pairs),
        "examples": [p.to_dict() for p in pairs[:3]],
    }


def evaluate_heldout(
    cfg: EvalConfig,
    policy: nn.Module,
    reference: ReferenceFn,
    tokenizer,
    prompts: Sequence[str],
    chosen_by_prompt: Mapping[str, str] | None,
    *,
    run_dir: Path,
    console: Console,
    device: str,
    reward_kl: bool = True,
) -> dict[str, Any]:
    """The ``eval:`` section on held-out prompts: reward and KL before/after, and the judged win rate.

    Returns:
        The report.json sections it computed (``reward_kl`` and/or ``judge``).
    """
    out: dict[str, Any] = {}
    fitting, _ = fitting_prompts(policy, tokenizer, list(prompts), cfg.max_new_tokens)
    if cfg.reward is not None and reward_kl:
        out["reward_kl"] = evaluate_before_after(cfg, policy, reference, tokenizer, fitting, console=console)
    if cfg.judge.kind != "none":
        out["judge"] = judge_run(cfg, policy, reference, tokenizer, prompts, chosen_by_prompt, console=console,
                                 device=device, pairs_path=run_dir / "judged_pairs.jsonl")
    return out
