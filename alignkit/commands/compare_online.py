"""Online runs (RLOO, WARP) inside `alignkit compare`: on the offline objectives' reward-versus-KL plot.

This is the DPO paper's Figure 2 protocol: every method is a point at (KL to the initial model, mean
reward) on the same held-out prompts with the same reward; runs of one method that differ in a parameter
(beta) form a trajectory and a WARP front is a curve over eta. The offline runs of a comparison share
every setting by construction; an online run brings its own recipe, so its evaluation settings are
checked against the offline ones and every difference is stated next to the table. Over ``--seeds`` an
online recipe is run once per seed (its ``seed``: initialisation, prompt order, sampling) into
``<output_dir>_seed<s>``, and its rows carry the seed and the method's shared label (``group``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from alignkit.commands.online import run_online_recipe
from alignkit.jsonio import read_json
from alignkit.recipe import Recipe, RecipeError, comparable_recipes, read_saved_recipe
from alignkit.recipe.online import OnlineRecipe, is_online_recipe, load_online_recipe, online_recipe_to_yaml
from alignkit.report.accuracy import accuracy_comparison
from alignkit.report.format import format_interval
from alignkit.report.frontier import online_frontier_rows

__all__ = ["OnlineEntry", "eval_differences", "online_markdown", "plan_online_runs", "resolve_online_runs"]

# Evaluation settings that must agree for points to share one plot.
_EVAL_FIELDS = ("reward", "num_prompts", "samples_per_prompt", "max_new_tokens", "temperature", "top_p", "seed")


@dataclass
class OnlineEntry:
    """One online run of a comparison: its folder, recipe, what happened, and its plot rows."""

    run_dir: Path
    recipe: OnlineRecipe | None
    status: str  # trained | resumed | reused | failed
    note: str = ""
    seconds: float = 0.0
    rows: list[dict[str, Any]] | None = None
    seed: int | None = None
    accuracy: dict[str, Any] | None = None  # the report's pass@k before and after (verifiable tasks)


def _saved_recipe(run_dir: Path) -> OnlineRecipe | None:
    """The folder's saved online recipe, read through the schema alone (its plugins are not imported)."""
    path = run_dir / "recipe.yaml"
    return read_saved_recipe(path, OnlineRecipe) if path.is_file() and is_online_recipe(path) else None


def _same_recipe(run_dir: Path, recipe: OnlineRecipe) -> bool:
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return True
    old, new = comparable_recipes(saved, recipe, OnlineRecipe, online_recipe_to_yaml)
    return old == new


# (the --online entry, its recipe (None: a finished folder used as it is), the seed it runs with, or None)
OnlinePlan = tuple[Path, "OnlineRecipe | None", "int | None"]


def _seeded_recipes(entry: Path, plugins: Sequence[str], seeds: Sequence[int]) -> list[OnlinePlan]:
    """The recipe of ``entry`` once (its own seed), or once per seed into ``<output_dir>_seed<s>``."""
    recipe = load_online_recipe(entry, extra_plugins=list(plugins))
    planned: list[OnlinePlan] = [(entry, recipe, None)]
    if seeds:
        planned = [(entry, load_online_recipe(entry, [f"seed={s}", f"output_dir={recipe.run_dir()}_seed{s}"],
                                              extra_plugins=list(plugins)), s) for s in seeds]
    for _, each, _ in planned:
        if each is not None and not _same_recipe(each.run_dir(), each):
            raise RecipeError(f"--online {entry}: {each.run_dir()} holds a different recipe; "
                              "move it or set output_dir")
    return planned


def plan_online_runs(entries: Sequence[str | Path], plugins: Sequence[str] = (),
                     seeds: Sequence[int] = ()) -> list[OnlinePlan]:
    """Check the ``--online`` entries before anything runs: each is an online run folder with a report
    (used as it is, whatever ``seeds``) or an online recipe (its plugins and ``plugins``, e.g. ``--plugin``
    files registering an advantage or a policy loss, imported first), planned once per seed of ``seeds``.

    Raises:
        RecipeError: an entry that is neither, or a recipe whose folder holds a different recipe.
    """
    recipes: list[OnlinePlan] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            if not (entry / "report.json").is_file():
                raise RecipeError(f"--online {entry}: the folder has no report.json (has the run finished?)")
            recipes.append((entry, None, None))
        elif entry.is_file() and is_online_recipe(entry):
            recipes += _seeded_recipes(entry, plugins, seeds)
        else:
            raise RecipeError(f"--online {entry}: not an online run folder nor a recipe with an 'online:' section")
    return recipes


def resolve_online_runs(plans: Sequence[OnlinePlan], *, console: Console) -> list[OnlineEntry]:
    """Run the planned online recipes (unless their folder already holds the same recipe with a report;
    resumed when interrupted) and read every run's plot rows. A failing run is reported, the others go on.
    """
    out: list[OnlineEntry] = []
    for entry, recipe, seed in plans:
        if recipe is None:
            out.append(OnlineEntry(entry, _saved_recipe(entry), "reused"))
            continue
        run_dir = recipe.run_dir()
        if (run_dir / "report.json").is_file():
            out.append(OnlineEntry(run_dir, recipe, "reused", seed=seed))
            continue
        status = "resumed" if (run_dir / "recipe.yaml").is_file() else "trained"
        console.rule(f"online: {recipe.name}")
        started = time.perf_counter()
        try:
            run_online_recipe(recipe, resume=status == "resumed", console=console)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
            console.print(f"[red]{recipe.name} failed[/]: {type(err).__name__}: {err}")
            out.append(OnlineEntry(run_dir, recipe, "failed", f"{type(err).__name__}: {err}".splitlines()[0],
                                   time.perf_counter() - started, seed=seed))
            continue
        out.append(OnlineEntry(run_dir, recipe, status, seconds=time.perf_counter() - started, seed=seed))
    for item in out:
        if item.status != "failed":
            item.rows = _with_seed(online_frontier_rows([item.run_dir]), item)
            item.accuracy = read_json(item.run_dir / "report.json").get("accuracy")
    return out


def _with_seed(rows: list[dict[str, Any]], entry: OnlineEntry) -> list[dict[str, Any]]:
    """Rows of a seeded run labelled with the method's shared label (the folder name without ``_seed<s>``)."""
    suffix = f"_seed{entry.seed}"
    for row in rows:
        row["seed"] = entry.seed
        row["group"] = row["label"]
        if entry.seed is not None and entry.run_dir.name.endswith(suffix):
            row["group"] = entry.run_dir.name[:-len(suffix)] + row["label"][len(entry.run_dir.name):]
    return rows


def eval_differences(offline: Recipe, online: OnlineRecipe) -> list[str]:
    """Evaluation settings in which an online run differs from the offline runs ("field: offline vs online")."""
    if offline.eval is None or online.eval is None:
        return ["evaluation: one side has no eval section"]
    diffs = [f"eval.{name}: {getattr(offline.eval, name)!r} vs {getattr(online.eval, name)!r}"
             for name in _EVAL_FIELDS if getattr(offline.eval, name) != getattr(online.eval, name)]
    source = offline.data.source
    for name in ("num_eval_prompts", "seed"):
        ours, theirs = getattr(source, name, None), getattr(online.prompts, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            diffs.append(f"held-out prompts {name}: {ours!r} vs {theirs!r}")
    if getattr(source, "kind", None) != online.prompts.kind:
        diffs.append(f"prompts: data.source.kind {getattr(source, 'kind', None)!r} vs prompts.kind {online.prompts.kind!r}")
    if offline.model.name_or_path != online.model.name_or_path:
        diffs.append(f"model: {offline.model.name_or_path!r} vs {online.model.name_or_path!r}")
    return diffs


def online_markdown(entries: Sequence[OnlineEntry], offline: Recipe | None) -> str:
    """The online runs as a Markdown section: one line per point, then how their evaluation differs."""
    lines = ["", "## Online runs", "",
             "| run | method | setting | status | mean reward (95% CI) | KL to the initial model, nats (95% CI) |",
             "|---|---|---|---|---|---|"]
    notes = []
    for entry in entries:
        if entry.status == "failed":
            lines.append(f"| {entry.run_dir.name} | - | - | failed | - | - |")
            notes.append(f"- {entry.run_dir.name} failed: {entry.note}")
            continue
        for row in entry.rows or []:
            setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
            lines.append(f"| {row['label']} | {row['loss']} | {setting} | {entry.status} | "
                         f"{format_interval(row['reward'], 3)} | {format_interval(row['kl'], 2)} |")
        if offline is not None and entry.recipe is not None:
            diffs = eval_differences(offline, entry.recipe)
            if diffs:
                notes.append(f"- {entry.run_dir.name} is evaluated differently from the offline runs: "
                             + "; ".join(diffs) + ". Its points are comparable among themselves, not exactly "
                             "with the offline points.")
        elif entry.recipe is None:
            notes.append(f"- {entry.run_dir.name}: no recipe.yaml in the folder, evaluation settings not checked")
    if notes:
        lines += ["", *notes]
    measured = [(e.run_dir.name, e.accuracy) for e in entries if e.accuracy]
    return "\n".join(lines) + "\n" + (accuracy_comparison(measured) if measured else "")
