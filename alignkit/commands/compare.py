"""`alignkit compare`: several objectives (and loss-parameter sweeps) on the same data, model, seed(s) and budget.

The protocol: every run is the base recipe with the same overrides; only the ``loss`` section, the run
folder (``<out>/<label>``) and, over ``seeds``, the recipe's ``seed`` differ, which :func:`plan_comparison`
checks (the planning lives in :mod:`alignkit.commands.compare_plan`; this module runs the plan). Runs are trained one after another in
this process; a run folder that already holds the same resolved recipe and a ``report.json`` is reused,
one that holds the same recipe without a report is resumed from its last checkpoint, and a failing run is
reported while the others go on. The data pipeline and reference log-prob caches are keyed by model and
data, so every run after the first reuses them. With ``seeds`` every method runs once per seed and the
table gains an across-seed summary and paired differences (:mod:`alignkit.report.seeds`). Without
``losses`` the recipe is an online recipe (or a finished online run folder) and the comparison holds online
runs alone: it and the ``online`` entries, on one reward-versus-KL plot.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from rich.console import Console

from alignkit.cache import writing
from alignkit.commands.compare_online import (
    OnlineEntry,
    online_markdown,
    plan_online_runs,
    resolve_online_runs,
)
from alignkit.commands.compare_plan import PlannedRun, PlanOptions, common_part, parse_sweep, plan_comparison
from alignkit.commands.frontier import draw_frontier
from alignkit.commands.run import run_recipe
from alignkit.jsonio import read_json, read_jsonl
from alignkit.recipe import Recipe, RecipeError, recipe_to_yaml
from alignkit.recipe.online import is_online_recipe
from alignkit.report.compare_plots import plot_training_curves
from alignkit.report.compare_table import comparison_row, render_comparison
from alignkit.report.seeds import paired_differences, seed_summary, seeded_rows, seeds_markdown
from alignkit.workflow.run_folder import inspect_run_folder

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "Comparison",
    "PlannedRun",
    "RunOutcome",
    "parse_sweep",
    "plan_comparison",
    "read_metrics",
    "run_comparison",
]

Status = Literal["trained", "resumed", "reused", "skipped", "failed"]


@dataclass
class RunOutcome:
    """What happened to one planned run."""

    plan: PlannedRun
    status: Status
    report: dict[str, Any] | None = None
    note: str = ""
    seconds: float = 0.0


@dataclass
class Comparison:
    """The result of :func:`run_comparison`: outcomes, table rows and the files written."""

    out_dir: Path
    outcomes: list[RunOutcome]
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    online: list[OnlineEntry] = field(default_factory=list)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The preference stage's metrics records (``preference/metrics.jsonl``); [] if absent."""
    path = run_dir / "preference" / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_jsonl(path, what="a metrics record")


def _folder_state(recipe: Recipe) -> tuple[str, str]:
    """Whether the run folder is empty, finished, interrupted, or holds a different recipe."""
    folder = inspect_run_folder(recipe.run_dir(), recipe, Recipe, recipe_to_yaml)
    if folder.state == "foreign":
        raise RecipeError(f"{recipe.run_dir()} holds files that are not an alignkit run; choose another --out")
    states = {"new": "new", "finished": "complete", "interrupted": "partial", "different": "stale"}
    return states[folder.state], folder.differences


def _clear_stale_folders(plans: Sequence[PlannedRun], *, overwrite: bool, console: Console) -> None:
    """Refuse (or, with ``overwrite``, delete) run folders that hold a different recipe, before any run starts.

    Raises:
        RecipeError: listing every stale folder with its first differences, when ``overwrite`` is False.
    """
    stale = []
    for plan in plans:
        if plan.recipe is not None:
            state, diff = _folder_state(plan.recipe)
            if state == "stale":
                stale.append((plan.recipe.run_dir(), diff))
    if stale and not overwrite:
        listed = "\n".join(f"  - {folder}: {diff}" for folder, diff in stale)
        raise RecipeError(f"{len(stale)} run folder(s) hold a different recipe:\n{listed}\n"
                          "pass --overwrite to retrain them, or choose another --out")
    for folder, _ in stale:
        console.print(f"[yellow]{folder}: different recipe, retraining from scratch (--overwrite)[/]")
        shutil.rmtree(folder)


def _reset_peak_memory() -> None:
    """Start each run's peak-memory figure afresh (runs share this process)."""
    try:
        # Linux: writing 5 resets the process's peak resident set size (VmHWM, which getrusage reports).
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _run_one(plan: PlannedRun, *, console: Console) -> RunOutcome:
    if plan.recipe is None:
        return RunOutcome(plan, "skipped", note=plan.skip_reason or "")
    run_dir = plan.recipe.run_dir()
    state, _ = _folder_state(plan.recipe)
    if state == "complete":
        report = read_json(run_dir / "report.json", what="a run's report")
        console.print(f"[cyan]{plan.label}: complete in {run_dir}, reused[/]")
        return RunOutcome(plan, "reused", report)
    console.rule(f"[bold]{plan.label}[/] ({'resuming' if state == 'partial' else 'training'})")
    _reset_peak_memory()
    started = time.perf_counter()
    try:
        summary = run_recipe(plan.recipe, resume=state == "partial", console=console)
    except Exception as err:  # noqa: BLE001 - one failing objective must not stop the comparison
        console.print(f"[red]{plan.label} failed[/]:\n{traceback.format_exc(limit=-3)}", markup=True,
                      highlight=False)
        return RunOutcome(plan, "failed", note=f"{type(err).__name__}: {err}".splitlines()[0],
                          seconds=time.perf_counter() - started)
    return RunOutcome(plan, "resumed" if state == "partial" else "trained", summary.report,
                      seconds=time.perf_counter() - started)


def run_comparison(
    recipe_path: str | Path,
    losses: Sequence[str],
    *,
    overwrite: bool = False,
    online: Sequence[str | Path] = (),
    baseline: str | None = None,
    console: Console | None = None,
    **planning: Unpack[PlanOptions],
) -> Comparison:
    """Plan, run (or reuse) every combination, then write the table (md, json) and plots into ``out``.

    Files written in the comparison folder: ``comparison.md``, ``comparison.json``, ``training_curves.png``
    and, when the runs evaluate reward and KL, ``frontier.png`` with its plotted figures in ``frontier.json``
    (drawn from ``comparison.json`` by :func:`~alignkit.commands.frontier.draw_frontier`, as ``alignkit
    frontier --comparison`` draws it). Arguments are those of
    :func:`~alignkit.commands.compare_plan.plan_comparison` (``sweeps``, ``overrides``, ``plugins``,
    ``out``), plus ``overwrite`` (retrain a run folder that holds a different recipe), ``online`` (online
    run folders or online recipes, run after the offline ones and placed on the same reward-versus-KL plot
    and in an "Online runs" section; see :mod:`alignkit.commands.compare_online`), ``baseline`` (with
    ``seeds``: the method every other one is compared with seed by seed; default the first) and the console
    progress goes to. With ``seeds``, ``comparison.md`` gains "Across seeds" and "Paired differences"
    sections and ``comparison.json`` their figures (``across_seeds``, ``paired``).

    Raises:
        RecipeError: a bad recipe, override, sweep, seed, baseline or loss name, before anything runs.
    """
    console = console or Console(stderr=True)
    online_only = not losses and _is_online_entry(recipe_path)
    if online_only:
        out_dir, plans, online = _plan_online_only(recipe_path, online, planning)
    else:
        out_dir, plans = plan_comparison(recipe_path, losses, **planning)
    seeds = list(planning.get("seeds", ()))
    online_plans = plan_online_runs(online, planning.get("plugins", ()), seeds)
    _check_baseline(baseline, plans, online_plans, seeded=bool(seeds))
    _clear_stale_folders(plans, overwrite=overwrite, console=console)
    out_dir.mkdir(parents=True, exist_ok=True)
    runnable = [p for p in plans if p.recipe is not None]
    console.print(f"comparison: {len(runnable)} run(s) of {recipe_path} into {out_dir}"
                  + (f", {len(plans) - len(runnable)} skipped" if len(runnable) < len(plans) else ""))
    started = time.perf_counter()
    outcomes = [_run_one(plan, console=console) for plan in plans]
    online_entries = resolve_online_runs(online_plans, console=console)
    rows, curves = _table_rows(outcomes)

    base = next((p.recipe for p in plans if p.recipe is not None), None)
    # A comparison of online runs alone is named by its folder, not by whichever run came first.
    title = f"{out_dir.name}: online runs compared" if online_only else \
        f"{base.name if base else Path(recipe_path).stem}: objectives compared"
    sweeps, overrides, plugins = planning.get("sweeps", ()), planning.get("overrides", ()), planning.get("plugins", ())
    facts = _protocol_facts(recipe_path, losses, base, sweeps, overrides, plugins, time.perf_counter() - started,
                            seeds, online=online[1:] if online_only else online)
    online_rows = [row for entry in online_entries for row in entry.rows or []]
    files = {"markdown": out_dir / "comparison.md", "json": out_dir / "comparison.json"}
    every_row = [*rows, *online_rows]
    if baseline is not None and baseline not in {r["group"] for r in seeded_rows(every_row)}:
        console.print(f"[yellow]--baseline {baseline}: no seeded method has that label; paired against the first[/]")
        baseline = None
    render_comparison(rows, console=console, title=title, facts=facts, markdown_path=files["markdown"],
                      json_path=files["json"],
                      extra_json={"recipe": str(recipe_path), "losses": list(losses), "sweeps": list(sweeps),
                                  "overrides": list(overrides), "seeds": seeds,
                                  "shared_recipe": common_part(base, seeded=bool(seeds)) if base else None,
                                  "online": [str(e.run_dir) for e in online_entries], "online_rows": online_rows,
                                  "across_seeds": seed_summary(every_row),
                                  "paired": paired_differences(every_row, baseline)})
    sections = [online_markdown(online_entries, base)] if online_entries else []
    sections.append(seeds_markdown(every_row, baseline))
    for section in filter(None, sections):
        console.print(section, markup=False, highlight=False)
        with writing(files["markdown"], "a") as f:
            f.write(section)
    files.update(_plots(curves, out_dir, title))
    console.print("written: " + ", ".join(str(p) for p in files.values()))
    return Comparison(out_dir, outcomes, rows, files, online_entries)


def _is_online_entry(path: str | Path) -> bool:
    """Whether ``path`` is an online recipe or a run folder (the recipe of an online-only comparison)."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and is_online_recipe(path))


def _plan_online_only(recipe_path: str | Path, online: Sequence[str | Path],
                      planning: PlanOptions) -> tuple[Path, list[PlannedRun], list[str | Path]]:
    """The folder and entries of a comparison of online runs alone: the recipe is the first ``--online`` entry.

    Raises:
        RecipeError: a sweep or override, which only the offline runs of ``--losses`` take.
    """
    for name in ("sweeps", "overrides"):
        if planning.get(name):
            option = "--sweep" if name == "sweeps" else "overrides"
            raise RecipeError(f"{option}: apply to the offline runs of --losses; an online recipe sets its own")
    out = planning.get("out")
    out_dir = Path(out) if out is not None else Path("runs") / f"compare_{Path(recipe_path).stem}"
    return out_dir, [], [recipe_path, *online]


def _check_baseline(baseline: str | None, plans: Sequence[PlannedRun], online_plans: Sequence[Any], *,
                    seeded: bool) -> None:
    """Refuse a ``--baseline`` without seeds or that names no offline method, before anything runs (an
    online method's label is known only once its report is read, so it is checked then)."""
    if baseline is None:
        return
    if not seeded:
        raise RecipeError("--baseline: a paired comparison needs --seeds (the same seeds on both sides)")
    groups = list(dict.fromkeys(p.group for p in plans))
    if baseline not in groups and not online_plans:
        raise RecipeError(f"--baseline {baseline!r}: not a compared method; methods: {', '.join(groups)}")


def _table_rows(outcomes: Sequence[RunOutcome]) -> tuple[list[dict[str, Any]], dict[str, tuple[str, list]]]:
    """The comparison table's row of each outcome, and the training curves (label -> (loss, metrics))."""
    rows, curves = [], {}
    for outcome in outcomes:
        plan = outcome.plan
        metrics = read_metrics(plan.recipe.run_dir()) if plan.recipe is not None and outcome.report else []
        row = comparison_row(label=plan.label, loss=plan.loss, params=plan.params, status=outcome.status,
                             report=outcome.report, metrics=metrics, note=outcome.note)
        rows.append({**row, "group": plan.group or plan.label, "seed": plan.seed})
        if metrics:
            curves[plan.label] = (plan.loss, metrics)
    return rows, curves


def _plots(curves: dict[str, tuple[str, list]], out_dir: Path, title: str) -> dict[str, Path]:
    """Draw the reward-versus-KL frontier (with its figures in frontier.json) and the training curves (those
    there is data for), and link the pictures from comparison.md."""
    images, data = {}, out_dir / "frontier.json"
    # Drawn from the comparison.json just written, as `alignkit frontier --comparison` draws it.
    frontier = draw_frontier((), [out_dir / "comparison.json"], out_dir / "frontier.png", f"{title}: reward vs KL",
                             data=data)
    if frontier is not None:
        images["frontier"] = frontier
    training = plot_training_curves(curves, out_dir / "training_curves.png", title=f"{title}: training")
    if training is not None:
        images["training_curves"] = training
    if images:
        with writing(out_dir / "comparison.md", "a") as f:
            f.write("\n" + "".join(f"![{name}]({path.name})\n\n" for name, path in images.items()))
    return {**images, **({"frontier_data": data} if frontier is not None else {})}


def _protocol_facts(recipe_path: str | Path, losses: Sequence[str], base: Recipe | None, sweeps: Sequence[str],
                    overrides: Sequence[str], plugins: Sequence[str], seconds: float,
                    seeds: Sequence[int] = (), online: Sequence[str | Path] = ()) -> list[str]:
    """Bullet lines stating what every run shared."""
    command = " ".join([f"alignkit compare {recipe_path}", *([f"--losses {','.join(losses)}"] if losses else []),
                        *(f"--online {o}" for o in online),
                        *(f"--plugin {p}" for p in plugins), *(f"--sweep {s}" for s in sweeps),
                        *([f"--seeds {','.join(map(str, seeds))}"] if seeds else []), *overrides])
    facts = [f"- command: `{command}`"]
    if base is not None:
        t = base.train
        budget = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epoch(s)"
        model = (f"{base.model.from_config['model_type']} built from a config" if base.model.from_config
                 else base.model.name_or_path)
        seed = (f"seeds {', '.join(map(str, seeds))} (each method once per seed: data sampling and order, "
                "adapter initialisation, rollouts; the evaluation's prompts and sampling seed stay the same)"
                if seeds else f"seed {base.seed}")
        facts.append(f"- shared by every run: model `{model}`, {seed}, "
                     f"{budget} of batch {t.batch_size}, lr {t.lr}, reference mode `{base.reference.mode}`")
    facts.append(f"- this invocation took {seconds:.0f} s (reused runs cost nothing)")
    if losses:  # the offline table's columns; an online-only comparison has none
        facts.append("- wall s, peak MiB: per run as recorded in its report.json; tokens/s: median training throughput")
    return facts
