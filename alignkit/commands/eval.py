"""`alignkit eval RUN_DIR`: judge (and, when missing, reward/KL-evaluate) a finished run; add to its report.

Each call adds one judged evaluation to report.json's ``judged`` list (and its pairs to judged_pairs.jsonl):
earlier evaluations, another judge's or another baseline's, are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from alignkit.data import SOURCES, prepare_data
from alignkit.data.pipeline import heldout_prompts
from alignkit.eval.agreement import LabelledPair, labelled_pairs
from alignkit.eval.config import EvalConfig
from alignkit.eval.heldout import evaluate_heldout
from alignkit.eval.judges.keys import check_judge_environment
from alignkit.jsonio import RunFileError, read_json
from alignkit.recipe import Recipe, load_recipe
from alignkit.report.judge import judged_evaluations
from alignkit.report.tables import write_report
from alignkit.workflow.environment import resolve_device
from alignkit.workflow.model_io import load_run_model
from alignkit.workflow.reference import base_loader, evaluation_base, evaluation_reference, reference_loader

__all__ = ["add_judged", "evaluate_run"]


def _heldout(recipe: Recipe, tokenizer: Any) -> tuple[list[str], dict[str, str], list[LabelledPair]]:
    """Held-out prompts, chosen responses by prompt, and the labelled pairs that check the judge."""
    spec = SOURCES.get(recipe.data.source.kind)
    if spec.heldout is not None:  # prompts known without preparing pairs: there are no labels either
        prompts, chosen = spec.heldout(recipe.data)
        return prompts, chosen, []
    examples = prepare_data(recipe.data, tokenizer).test_examples
    return *heldout_prompts(examples), labelled_pairs(examples)


def add_judged(report: dict[str, Any], judged: list[dict[str, Any]]) -> None:
    """Append judged evaluations to ``report["judged"]``, after the earlier ones (a report written before
    ``judged`` existed keeps its single ``judge`` section, as the first evaluation)."""
    report["judged"] = [*judged_evaluations(report), *judged]
    report.pop("judge", None)


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
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (needs recipe.yaml and model/)")
    # The run may have trained on another machine (another device): only the recipe itself is checked here.
    recipe = load_recipe(run_dir / "recipe.yaml", list(overrides), check_environment=False)
    cfg = recipe.eval or EvalConfig()
    if cfg.judge.kind == "none" and cfg.reward is None:
        raise ValueError("nothing to evaluate: the recipe has no eval.judge and no eval.reward; e.g. "
                         "alignkit eval RUN_DIR eval.judge.kind=reward eval.judge.reward=vader_sentiment")
    check_judge_environment(cfg.judge)  # an unset API-key variable fails now, not after the reward/KL pass
    report_path = run_dir / "report.json"  # read (and checked) before any model is loaded
    report: dict[str, Any] = read_json(report_path, what="a run's report") if report_path.exists() else {
        "recipe": recipe.name, "objective": recipe.objective().describe()}
    if not isinstance(report.get("judged", []), list):
        raise RunFileError(f"{report_path}: 'judged' must be a list of evaluations")
    dev = resolve_device(device)
    policy, tokenizer = load_run_model(run_dir, device=str(dev))
    reference = evaluation_reference(recipe, policy, reference_loader(recipe, dev, run_dir))
    base = evaluation_base(recipe, policy, reference, base_loader(recipe, dev))
    prompts, chosen, labelled = _heldout(recipe, tokenizer)
    evaluation = len(judged_evaluations(report)) + 1
    sections = evaluate_heldout(cfg, policy, reference, tokenizer, prompts, chosen, run_dir=run_dir,
                                console=console, device=str(dev), base=base, labelled=labelled,
                                reward_kl=redo_reward_kl or "reward_kl" not in report, evaluation=evaluation)
    add_judged(report, sections.pop("judged", []))
    report.update(sections)
    write_report(report, run_dir, console=console)
    return report
