"""Judged evaluation of a policy against its baselines, for the end of a run and for `alignkit eval RUN_DIR`.

:func:`judge_run` samples one completion per held-out prompt from the policy, and from each baseline the
recipe names (``base``: the untuned model; ``reference``: the model training kept close to; ``chosen``:
the dataset's chosen response); judges each pair in both orders; summarizes each baseline's scores
(:mod:`alignkit.eval.winrate`); measures the judge's position bias (:mod:`alignkit.eval.position_bias`) and,
where the held-out data has labelled pairs, its agreement with them (:mod:`alignkit.eval.agreement`); and
warns when its verdicts cannot be trusted. :func:`evaluate_heldout` runs the evaluation a recipe's
``eval:`` section asks for (reward versus KL, the judge) and returns the report sections. Reloading a
finished run for `alignkit eval RUN_DIR` and adding to its report are the command's
(:mod:`alignkit.commands.eval`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from alignkit.cache import writing
from alignkit.eval.agreement import LabelledPair, judge_agreement
from alignkit.eval.before_after import evaluate_before_after
from alignkit.eval.config import EvalConfig
from alignkit.eval.judges import DEFAULT_MAX_INVALID_FRACTION, Judge, JudgedPair, build_judge, judge_pairs
from alignkit.eval.position_bias import judge_warnings, position_bias
from alignkit.eval.stats import Interval
from alignkit.eval.winrate import win_rate_report
from alignkit.jsonio import to_json
from alignkit.models.generate import format_prompt, generate_completions, uses_chat_template
from alignkit.models.kl import ReferenceFn
from alignkit.progress import StepProgress
from alignkit.timing import phase

__all__ = ["BaselineSources", "evaluate_heldout", "fitting_prompts", "judge_run"]


@dataclass
class BaselineSources:
    """Where each baseline's responses come from.

    Attributes:
        reference: context-yielding callable of the reference model (see :mod:`alignkit.models.kl`).
        base: the same for the untuned model; may be the very object ``reference`` is when they are the
            same model (then its samples are drawn once).
        chosen: prompt -> the dataset's chosen response.
    """

    reference: ReferenceFn | None = None
    base: ReferenceFn | None = None
    chosen: Mapping[str, str] = field(default_factory=dict)


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
    tokenizer,
    prompts: Sequence[str],
    sources: BaselineSources,
    *,
    labelled: Sequence[LabelledPair] = (),
    console: Console | None = None,
    judge: Judge | None = None,
    device: str = "cpu",
    pairs_path: str | Path | None = None,
    evaluation: int = 1,
) -> dict[str, Any]:
    """Win rates of ``policy`` against each of ``cfg.baselines`` on up to ``cfg.num_prompts`` prompts.

    Args:
        cfg: the recipe's eval section (sampling settings, ``judge``, ``baselines``, ``agreement_pairs``).
        policy: the tuned model.
        tokenizer: shared by the policy and the baseline models.
        prompts: held-out prompts.
        sources: the baselines' models and chosen responses.
        labelled: held-out pairs labelled by the data set, to measure the judge's agreement with the labels.
        console: progress messages and warnings (stderr when None).
        judge: a ready judge; default: :func:`alignkit.eval.judges.build_judge` of ``cfg.judge``.
        device: where a judge built here runs.
        pairs_path: if given, every judged pair with both verdicts is appended there as a JSON line, tagged
            with ``evaluation`` and ``against`` (the baseline, or ``agreement`` for the labelled pairs).
        evaluation: this evaluation's number in the run's report (1 for the first).

    Returns:
        One entry of report.json's ``judged`` list: ``evaluation``, ``judge`` (its description), ``pair_rule``,
        ``baselines`` (one win-rate section per baseline), ``agreement`` (or None, with ``agreement_note``),
        ``position_bias`` over every verdict, ``warnings`` and ``seconds``. Empty when the judge kind is none.

    Raises:
        InvalidVerdictsError: more than ``cfg.judge.max_invalid_fraction`` of a baseline's (or the agreement
            check's) verdicts are invalid, or none is valid; nothing is reported.
        JudgeRequestError: the HTTP judge met an error that every request would meet (a 4xx, a redirect).
    """
    console = console or Console(stderr=True)
    judge = judge or build_judge(cfg.judge, device=device)
    if judge is None:
        return {}
    start = time.perf_counter()
    limit = getattr(cfg.judge, "max_invalid_fraction", DEFAULT_MAX_INVALID_FRACTION)
    rows: list[dict[str, Any]] = []
    agreement, judged = _agreement(cfg, judge, labelled, limit, console)
    rows += [{"evaluation": evaluation, "against": "agreement", **p.to_dict()} for p in judged]
    kept, too_long = _judged_prompts(cfg, policy, tokenizer, prompts, sources.chosen)
    sampling = cfg.sampling.but(samples_per_prompt=1)  # one completion per prompt and side
    with StepProgress(console, "judge: sampling the policy", len(kept)) as progress:
        policy_texts = [c.text for c in generate_completions(policy, tokenizer, kept, sampling,
                                                             progress=progress.update)]
    samples: dict[int, list[str]] = {}  # by model source: base and reference may be one model
    sections = []
    for name in cfg.baselines:
        baseline_texts = _baseline_texts(name, sources, tokenizer, kept, cfg, samples, console)
        console.print(f"judge: {2 * len(kept)} comparisons against {name} with {judge.describe()}")
        # Fails (InvalidVerdictsError, a ValueError) rather than report a win rate the verdicts do not support.
        started = time.perf_counter()
        with StepProgress(console, f"judge vs {name}", 2 * len(kept), unit="comparisons") as bar:
            pairs = judge_pairs(judge, kept, policy_texts, baseline_texts, max_invalid_fraction=limit,
                                progress=bar.update)
        console.print(f"judge: {2 * len(kept)} comparisons against {name} done in {time.perf_counter() - started:.0f} s")
        sections.append(_baseline_section(name, cfg, tokenizer, pairs, skipped_long_prompts=too_long))
        rows += [{"evaluation": evaluation, "against": name, **p.to_dict()} for p in pairs]
        judged += pairs
    bias = position_bias(judged)
    agreement_ci = Interval(**agreement["agreement"]) if agreement else None
    warnings = judge_warnings(bias, max_flip_rate=getattr(cfg.judge, "max_flip_rate", 1.0),
                              max_same_verdict_rate=getattr(cfg.judge, "max_same_verdict_rate", 1.0),
                              agreement=agreement_ci, mean_probability=judge.pair_rule == "mean_probability")
    for warning in warnings:
        console.print(f"[bold red]JUDGE WARNING: {warning}[/]")
    if pairs_path is not None:
        with writing(pairs_path, "a") as f:
            f.writelines(to_json(row, indent=None) + "\n" for row in rows)
    return {
        "evaluation": evaluation,
        "judge": judge.describe(),
        "pair_rule": judge.pair_rule,
        "baselines": sections,
        "agreement": agreement,
        **({} if agreement else {"agreement_note": "no labelled held-out pairs to check the judge against"
                                 if not labelled else "eval.agreement_pairs is 0"}),
        "position_bias": bias.to_dict(),
        "warnings": warnings,
        "seconds": time.perf_counter() - start,
    }


def _agreement(cfg: EvalConfig, judge: Judge, labelled: Sequence[LabelledPair], limit: float,
               console: Console) -> tuple[dict[str, Any] | None, list[JudgedPair]]:
    """The judge's agreement with the data set's labels on up to ``cfg.agreement_pairs`` pairs (None: none)."""
    n = cfg.num_prompts if cfg.agreement_pairs is None else cfg.agreement_pairs
    chosen = list(labelled)[:n]
    if not chosen:
        return None, []
    console.print(f"judge: {2 * len(chosen)} comparisons of the data set's chosen and rejected responses")
    with StepProgress(console, "judge check: labelled pairs", 2 * len(chosen), unit="comparisons") as bar:
        entry, judged = judge_agreement(judge, chosen, max_invalid_fraction=limit, seed=cfg.seed, progress=bar.update)
    return {"label": "the data set's chosen response over its rejected one", **entry}, judged


def _judged_prompts(cfg: EvalConfig, policy: nn.Module, tokenizer, prompts: Sequence[str],
                    chosen: Mapping[str, str]) -> tuple[list[str], int]:
    """Up to ``cfg.num_prompts`` prompts that fit the context (and have a chosen response when that is a
    baseline: every baseline is judged on the same prompts), and how many did not fit."""
    kept = list(prompts)
    if "chosen" in cfg.baselines:
        kept = [p for p in kept if p in chosen]
        if not kept:
            raise ValueError("eval.baselines has 'chosen' but no held-out prompt has a chosen response "
                             "(generated sentiment data and online prompts have none: use base or reference)")
    kept, too_long = fitting_prompts(policy, tokenizer, kept, cfg.max_new_tokens)
    kept = kept[: cfg.num_prompts]
    if not kept:
        raise ValueError(f"no held-out prompts to judge on ({too_long} do not fit the model's context with "
                         f"eval.max_new_tokens={cfg.max_new_tokens}; data.test_size is 0?)")
    return kept, too_long


def _baseline_texts(name: str, sources: BaselineSources, tokenizer, prompts: list[str], cfg: EvalConfig,
                    samples: dict[int, list[str]], console: Console) -> list[str]:
    """The baseline's response to each prompt: the chosen one, or a sample of its model (drawn once per model)."""
    if name == "chosen":
        return [sources.chosen[p] for p in prompts]
    model = sources.base if name == "base" else sources.reference
    if model is None:
        raise ValueError(f"eval.baselines has {name!r} but no {name} model was given")
    if id(model) not in samples:
        with StepProgress(console, f"judge: sampling the {name} model", len(prompts)) as progress, \
                model() as baseline_model:
            completions = generate_completions(baseline_model, tokenizer, prompts,
                                               cfg.sampling.but(samples_per_prompt=1), progress=progress.update)
        samples[id(model)] = [c.text for c in completions]
    return samples[id(model)]


def _baseline_section(name: str, cfg: EvalConfig, tokenizer, pairs: Sequence[JudgedPair], *,
                      skipped_long_prompts: int) -> dict[str, Any]:
    """One baseline's entry in a judged evaluation: win rate, lengths, order consistency, position bias."""
    report = win_rate_report(
        [p.score for p in pairs],
        [_token_count(tokenizer, p.policy) for p in pairs],
        [_token_count(tokenizer, p.baseline) for p in pairs],
        invalid_verdicts=sum(p.invalid for p in pairs),
        length_unit="tokens",
        seed=cfg.seed,
    )
    probabilities = [p.policy_probability for p in pairs if p.policy_probability is not None]
    return {
        "baseline": name,
        **report.to_dict(),
        "order_consistency": sum(p.consistent for p in pairs) / len(pairs),
        "position_bias": position_bias(pairs).to_dict(),
        "mean_policy_probability": sum(probabilities) / len(probabilities) if probabilities else None,
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
    base: ReferenceFn | None = None,
    labelled: Sequence[LabelledPair] = (),
    reward_kl: bool = True,
    evaluation: int = 1,
) -> dict[str, Any]:
    """The ``eval:`` section on held-out prompts: reward and KL before/after, and the judged win rates.

    Args:
        reference: the reference model (KL, and the ``reference`` baseline).
        base: the untuned model (the ``base`` baseline); needed only when ``cfg.baselines`` names it.
        labelled: held-out pairs labelled by the data set (the judge's agreement check).
        reward_kl: compute the reward/KL section (when ``cfg.reward`` is set).
        evaluation: the judged evaluation's number in the run's report.

    Returns:
        The report.json sections it computed: ``reward_kl`` and/or ``judged`` (a list of one evaluation,
        which :mod:`alignkit.commands.eval` appends to a report's earlier ones).
    """
    out: dict[str, Any] = {}
    fitting, _ = fitting_prompts(policy, tokenizer, list(prompts), cfg.max_new_tokens)
    if cfg.reward is not None and reward_kl:
        out["reward_kl"] = evaluate_before_after(cfg, policy, reference, tokenizer, fitting, console=console)
    if cfg.judge.kind != "none":
        sources = BaselineSources(reference=reference, base=base, chosen=chosen_by_prompt or {})
        with phase("judge"):
            out["judged"] = [judge_run(cfg, policy, tokenizer, prompts, sources, labelled=labelled, console=console,
                                       device=device, pairs_path=run_dir / "judged_pairs.jsonl", evaluation=evaluation)]
    return out
