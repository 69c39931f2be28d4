"""Judged evaluation of a policy against a baseline, for the end of a run and for `alignkit eval RUN_DIR`.

:func:`judge_run` samples one completion per held-out prompt from the policy and from the baseline (the
reference model, or the dataset's chosen response), judges each pair in both orders and summarizes the
scores (:mod:`alignkit.eval.winrate`). :func:`evaluate_run` reloads a finished run (its recipe.yaml and
model/), adds the judge (and, if missing, the reward-versus-KL evaluation) to report.json and report.md,
and draws the plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from alignkit.eval.config import EvalConfig
from alignkit.eval.generate import format_prompt, generate_completions, uses_chat_template
from alignkit.eval.judges import Judge, build_judge, judge_pairs
from alignkit.eval.kl import ReferenceFn
from alignkit.eval.winrate import win_rate_report

__all__ = ["evaluate_heldout", "evaluate_run", "fitting_prompts", "heldout_prompts", "judge_markdown", "judge_report_rows", "judge_run"]


def _ci(entry: Mapping[str, float] | None) -> str:
    return "-" if not entry else f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


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
    """
    console = console or Console(stderr=True)
    judge = judge or build_judge(cfg.judge, device=device)
    if judge is None:
        return {}
    start = time.perf_counter()
    prompts = list(prompts)
    if cfg.baseline == "chosen":
        chosen_by_prompt = chosen_by_prompt or {}
        prompts = [p for p in prompts if p in chosen_by_prompt]
        if not prompts:
            raise ValueError("eval.baseline is 'chosen' but no held-out prompt has a chosen response "
                             "(generated sentiment data has none: use baseline 'reference')")
    prompts, too_long = fitting_prompts(policy, tokenizer, prompts, cfg.max_new_tokens)
    prompts = prompts[: cfg.num_prompts]
    if not prompts:
        raise ValueError(f"no held-out prompts to judge on ({too_long} do not fit the model's context with "
                         f"eval.max_new_tokens={cfg.max_new_tokens}; data.test_size is 0?)")
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "batch_size": cfg.batch_size, "seed": cfg.seed}
    console.print(f"judge: sampling the policy on {len(prompts)} prompts")
    policy_texts = [c.text for c in generate_completions(policy, tokenizer, prompts, **sampling)]
    if cfg.baseline == "chosen":
        baseline_texts = [chosen_by_prompt[p] for p in prompts]
    else:
        if reference is None:
            raise ValueError("eval.baseline is 'reference' but no reference model was given")
        console.print("judge: sampling the reference")
        with reference() as reference_model:
            baseline_texts = [c.text for c in generate_completions(reference_model, tokenizer, prompts, **sampling)]
    console.print(f"judge: {2 * len(prompts)} comparisons with {judge.describe()}")
    pairs = judge_pairs(judge, prompts, policy_texts, baseline_texts)
    report = win_rate_report(
        [p.score for p in pairs],
        [_token_count(tokenizer, t) for t in policy_texts],
        [_token_count(tokenizer, t) for t in baseline_texts],
        invalid_verdicts=sum(p.invalid for p in pairs),
        length_unit="tokens",
        seed=cfg.seed,
    )
    if pairs_path is not None:
        Path(pairs_path).write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    return {
        "judge": judge.describe(),
        "baseline": cfg.baseline,
        **report.to_dict(),
        "order_consistency": sum(p.consistent for p in pairs) / len(pairs),
        "skipped_long_prompts": too_long,
        "cached_verdicts": sum(int(p.policy_first.cached) + int(p.policy_second.cached) for p in pairs),
        "examples": [p.to_dict() for p in pairs[:3]],
        "seconds": time.perf_counter() - start,
    }


def judge_report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows of (metric, before, after) for the report table from report.json's ``judge`` section."""
    judge = report.get("judge")
    if not judge:
        return []
    who = f"{judge['judge'].get('name', 'judge')} judge"
    rows = [
        [f"win rate vs {judge['baseline']} ({who}, 95% CI)", "0.500", _ci(judge["win_rate"])],
        ["length-controlled win rate (95% CI)", "", _ci(judge.get("length_controlled_win_rate"))],
        ["wins / ties / losses", "", f"{judge['wins']} / {judge['ties']} / {judge['losses']}"],
    ]
    if judge.get("invalid_verdicts"):
        rows.append(["invalid verdicts (counted as ties)", "", f"{judge['invalid_verdicts']} of {2 * judge['n']}"])
    length = judge["length"]
    rows.append([f"mean judged response {length['unit']} (baseline / policy)", "",
                 f"{length['baseline_mean']:.1f} / {length['policy_mean']:.1f}"])
    return rows


def judge_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """A Markdown section describing the judge, its figures and plots (to append to report.md)."""
    judge = report.get("judge")
    lines = []
    if judge:
        desc = ", ".join(f"{k}={v}" for k, v in judge["judge"].items())
        lines += [
            "## Judged win rate", "",
            f"Policy versus {judge['baseline']} on {judge['n']} held-out prompts, each pair judged in both orders "
            f"(disagreement = tie). Judge: {desc}.", "",
            "| metric | value |", "|---|---|",
            *[f"| {row[0]} | {row[2]} |" for row in judge_report_rows(report)],
            f"| order consistency | {judge['order_consistency']:.3f} |", "",
        ]
    if plots:
        lines += ["## Plots", "", *[f"![{Path(p).stem}]({p})" for p in plots], ""]
    return "\n".join(lines)


def heldout_prompts(examples: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """Distinct prompts of held-out examples, in order, and each one's chosen response where it has one.

    A conversation contributes its single user turn (multi-turn conversations are not sampled from).
    """
    prompts: dict[str, None] = {}
    chosen: dict[str, str] = {}
    for ex in examples:
        prompt = ex.prompt
        if not isinstance(prompt, str):
            users = [m["content"] for m in prompt if m.get("role") == "user"]
            if len(prompt) != 1 or not users:
                continue
            prompt = users[0]
        prompts.setdefault(prompt, None)
        response = ex.chosen if isinstance(ex.chosen, str) else "".join(
            m["content"] for m in ex.chosen if m.get("role") == "assistant")
        chosen.setdefault(prompt, response.strip())
    return list(prompts), chosen


def _heldout(recipe, tokenizer) -> tuple[list[str], dict[str, str]]:
    """Held-out prompts of a recipe and, where the data has them, their chosen responses."""
    if recipe.data.source.kind == "sentiment":  # generated pairs: the held-out prompts, no chosen text
        from alignkit.data.sentiment import sentiment_prompts

        return sentiment_prompts(recipe.data.source.num_eval_prompts, seed=recipe.data.seed, split="eval"), {}
    from alignkit.data import prepare_data

    return heldout_prompts(prepare_data(recipe.data, tokenizer).test_examples)


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
    from alignkit.eval.run_eval import evaluate_before_after

    out: dict[str, Any] = {}
    fitting, _ = fitting_prompts(policy, tokenizer, list(prompts), cfg.max_new_tokens)
    if cfg.reward is not None and reward_kl:
        out["reward_kl"] = evaluate_before_after(cfg, policy, reference, tokenizer, fitting, console=console)
    if cfg.judge.kind != "none":
        out["judge"] = judge_run(cfg, policy, reference, tokenizer, prompts, chosen_by_prompt, console=console,
                                 device=device, pairs_path=run_dir / "judged_pairs.jsonl")
    return out


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    console: Console | None = None,
    device: str = "auto",
    redo_reward_kl: bool = False,
) -> dict[str, Any]:
    """Judge (and, when missing, reward/KL-evaluate) a finished run; update its report and plots.

    Args:
        run_dir: a folder written by ``alignkit run`` (recipe.yaml, model/, report.json).
        overrides: dotted recipe overrides, e.g. ``eval.judge.kind=reward eval.judge.reward=vader_sentiment``.
        console: progress and the report table.
        device: ``auto``, ``cpu``, ``cuda``...
        redo_reward_kl: recompute the reward/KL section even if report.json has one.

    Returns:
        The updated report (also written to report.json and report.md).
    """
    from alignkit.models.reference import AdaptersOffReference
    from alignkit.peft import adapters_disabled, has_adapters
    from alignkit.pipeline import reference_loader, resolve_device
    from alignkit.recipe import load_recipe
    from alignkit.report.tables import write_report
    from alignkit.serve import load_for_serving

    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (needs recipe.yaml and model/)")
    recipe = load_recipe(run_dir / "recipe.yaml", list(overrides))
    cfg = recipe.eval or EvalConfig()
    if cfg.judge.kind == "none" and cfg.reward is None:
        raise ValueError("nothing to evaluate: the recipe has no eval.judge and no eval.reward; e.g. "
                         "alignkit eval RUN_DIR eval.judge.kind=reward eval.judge.reward=vader_sentiment")
    dev = resolve_device(device)
    policy, tokenizer = load_for_serving(run_dir, device=str(dev))
    if has_adapters(policy):
        reference = AdaptersOffReference(policy, adapters_disabled).model_context
    else:
        reference_model = reference_loader(recipe, dev)().requires_grad_(False).eval()

        def reference() -> Any:
            return nullcontext(reference_model)

    prompts, chosen = _heldout(recipe, tokenizer)
    report_path = run_dir / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {
        "recipe": recipe.name, "objective": recipe.objective().describe()}
    report.update(evaluate_heldout(cfg, policy, reference, tokenizer, prompts, chosen, run_dir=run_dir,
                                   console=console, device=str(dev),
                                   reward_kl=redo_reward_kl or "reward_kl" not in report))
    write_report(report, run_dir, console=console)
    return report
