"""`alignkit eval RUN_DIR`: judge (and, when missing, reward/KL-evaluate) a finished run; add to its report.

Each call adds one judged evaluation to report.json's ``judged`` list (and its pairs to judged_pairs.jsonl):
earlier evaluations, another judge's or another baseline's, are kept.

A run folder is data, not code: the plugins its recipe records are never imported from it. Plugins named
with ``--plugin`` are; a recipe that needs one that was not named fails with the plugins the run used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from alignkit.data import SOURCES, prepare_data
from alignkit.data.pipeline import heldout_prompts
from alignkit.eval.agreement import LabelledPair, labelled_pairs
from alignkit.eval.config import EvalConfig
from alignkit.eval.heldout import evaluate_heldout
from alignkit.eval.judges.keys import check_judge_environment
from alignkit.recipe import Recipe, RecipeError, load_recipe
from alignkit.recipe.source import parse_yaml, read_text
from alignkit.report.judge import judged_evaluations
from alignkit.report.tables import write_report
from alignkit.timing import PhaseClock, phase, recording
from alignkit.workflow.environment import resolve_device
from alignkit.workflow.folder_lock import run_folder_lock
from alignkit.workflow.model_io import load_run_model
from alignkit.workflow.reference import base_loader, evaluation_base, evaluation_reference, reference_loader
from alignkit.workflow.time_breakdown import time_breakdown

__all__ = ["add_judged", "evaluate_run", "load_run_recipe"]


def _heldout(recipe: Recipe, tokenizer: Any) -> tuple[list[str], dict[str, str], list[LabelledPair]]:
    """Held-out prompts, chosen responses by prompt, and the labelled pairs that check the judge."""
    spec = SOURCES.get(recipe.data.source.kind)
    if spec.heldout is not None:  # prompts known without preparing pairs: there are no labels either
        prompts, chosen = spec.heldout(recipe.data)
        return prompts, chosen, []
    examples = prepare_data(recipe.data, tokenizer).test_examples
    return *heldout_prompts(examples), labelled_pairs(examples)


def _plugins_used(saved: Path) -> list[str]:
    """The plugins a run folder's recipe records, as ``path (sha256 ...)`` or a module name."""
    data = parse_yaml(read_text(saved), str(saved))[0]
    listed = data.get("plugins") if isinstance(data, dict) else None
    return [f"{p.get('path')} (sha256 {p.get('sha256')})" if isinstance(p, dict) else str(p)
            for p in (listed if isinstance(listed, list) else [listed] if listed else [])]


def load_run_recipe(run_dir: Path, overrides: Sequence[str] = (), plugins: Sequence[str] = ()) -> Recipe:
    """The recipe a run folder saved, with ``overrides``; only the ``plugins`` named here are imported.

    Raises:
        RecipeError: the recipe does not validate; when the run used plugins, the message names them (with
            their SHA-256) and how to pass them.
    """
    saved = run_dir / "recipe.yaml"
    # The run may have trained on another machine (another device): only the recipe itself is checked here.
    try:
        return load_recipe(saved, list(overrides), list(plugins), check_environment=False, recipe_plugins=False)
    except RecipeError as err:
        used = _plugins_used(saved)
        if not used:
            raise
        raise RecipeError(f"{err}\nthe run used the plugin(s) {', '.join(used)}; a run folder's plugins are "
                          f"never imported from it: name them with --plugin FILE") from None


def add_judged(report: dict[str, Any], judged: list[dict[str, Any]]) -> None:
    """Append judged evaluations to ``report["judged"]``, after the earlier ones (a report written before
    ``judged`` existed keeps its single ``judge`` section, as the first evaluation)."""
    report["judged"] = [*judged_evaluations(report), *judged]
    report.pop("judge", None)


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    plugins: Sequence[str] = (),
    console: Console | None = None,
    device: str = "auto",
    redo_reward_kl: bool = False,
) -> dict[str, Any]:
    """Judge (and, when missing, reward/KL-evaluate) a finished run; update its report and plots.

    Args:
        run_dir: a folder written by ``alignkit run`` (recipe.yaml, model/, report.json).
        overrides: dotted recipe overrides, e.g. ``eval.judge.kind=reward eval.judge.reward=vader_sentiment``.
        plugins: plugin files or modules to import (``--plugin``); the run folder's own are never imported.
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
    with run_folder_lock(run_dir, console):  # not while a run (or another eval) writes the folder
        clock, started = PhaseClock(), time.perf_counter()
        with recording(clock):
            report, dev = _evaluate(run_dir, load_run_recipe(run_dir, overrides, plugins), console, device,
                                    redo_reward_kl)
        # This command's own time, not the training run's (which report.json keeps as `time_breakdown`).
        report["eval_time_breakdown"] = time_breakdown(clock, time.perf_counter() - started, dev)
        write_report(report, run_dir, console=console, printed_time="eval_time_breakdown")
        return report


def _evaluate(run_dir: Path, recipe: Recipe, console: Console, device: str,
              redo_reward_kl: bool) -> tuple[dict[str, Any], torch.device]:
    """:func:`evaluate_run` once the folder is held, timed by its caller: (the updated report, the device)."""
    cfg = recipe.eval or EvalConfig()
    if cfg.judge.kind == "none" and cfg.reward is None:
        raise ValueError("nothing to evaluate: the recipe has no eval.judge and no eval.reward; e.g. "
                         "alignkit eval RUN_DIR eval.judge.kind=reward eval.judge.reward=vader_sentiment")
    check_judge_environment(cfg.judge)  # an unset API-key variable fails now, not after the reward/KL pass
    dev = resolve_device(device)
    with phase("loading"):
        policy, tokenizer = load_run_model(run_dir, device=str(dev))
        reference = evaluation_reference(recipe, policy, reference_loader(recipe, dev, run_dir))
        base = evaluation_base(recipe, policy, reference, base_loader(recipe, dev))
    with phase("data preparation"):
        prompts, chosen, labelled = _heldout(recipe, tokenizer)
    report_path = run_dir / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {
        "recipe": recipe.name, "objective": recipe.objective().describe()}
    evaluation = len(judged_evaluations(report)) + 1
    with phase("evaluation"):
        sections = evaluate_heldout(cfg, policy, reference, tokenizer, prompts, chosen, run_dir=run_dir,
                                    console=console, device=str(dev), base=base, labelled=labelled,
                                    reward_kl=redo_reward_kl or "reward_kl" not in report, evaluation=evaluation)
    add_judged(report, sections.pop("judged", []))
    report.update(sections)
    return report, dev
