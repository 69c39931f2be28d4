"""Planning of `alignkit compare`: losses x sweep values (x seeds), each a resolved recipe in its own run folder.

Every planned run is the base recipe with the same overrides; only the ``loss`` section, the run folder
(``<out>/<label>``) and, with ``--seeds``, the recipe's ``seed`` differ, which :func:`plan_comparison` checks
rather than assumes. A combination that cannot run (a swept or overridden parameter the loss lacks) is
planned as skipped, with the reason.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

from alignkit.losses import get_loss, list_losses
from alignkit.recipe import Recipe, RecipeError, load_recipe
from alignkit.workflow.run_folder import recipe_differences

__all__ = ["PlanOptions", "PlannedRun", "common_part", "parse_seeds", "parse_sweep", "plan_comparison"]

# One run's loss parameters from the sweeps: ((name, raw value), ...), one entry per swept parameter.
Combination = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the comparison grid.

    Attributes:
        label: folder name and table label, e.g. ``dpo``, ``dpo_beta0.1`` or ``dpo_beta0.1_seed2``.
        loss: registered objective name.
        params: loss parameters set by ``--sweep`` for this run (raw command-line text as value).
        recipe: the resolved recipe, or None when the run is skipped.
        skip_reason: why the combination cannot run (a swept parameter the loss lacks), else None.
        seed: the recipe's seed when the comparison runs over ``--seeds``, else None.
        group: the label every seed of this method shares (``label`` without seeds).
    """

    label: str
    loss: str
    params: dict[str, str]
    recipe: Recipe | None
    skip_reason: str | None = None
    seed: int | None = None
    group: str = ""


class PlanOptions(TypedDict, total=False):
    """The keyword arguments of :func:`plan_comparison`, which
    :func:`~alignkit.commands.compare.run_comparison` takes too."""

    sweeps: Sequence[str]
    overrides: Sequence[str]
    plugins: Sequence[str]
    out: str | Path | None
    seeds: Sequence[int]


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``.

    Raises:
        RecipeError: a value that is not a whole number >= 0, or a repeated one.
    """
    items = [v.strip() for v in spec.split(",") if v.strip()]
    if not items or not all(v.isdigit() for v in items):
        raise RecipeError(f"--seeds {spec!r}: expected whole numbers >= 0 separated by commas, e.g. 0,1,2")
    seeds = [int(v) for v in items]
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds {spec!r}: a seed is repeated")
    return seeds


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``"loss.beta=0.05,0.1"`` -> ``("loss.beta", ["0.05", "0.1"])``.

    Raises:
        RecipeError: when the spec is not ``loss.<param>=v1,v2,...``.
    """
    key, sep, values = spec.partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not items:
        raise RecipeError(f"--sweep {spec!r}: expected key=v1,v2,..., e.g. loss.beta=0.05,0.1,0.5")
    if not re.fullmatch(r"loss\.[A-Za-z_]\w*", key):
        raise RecipeError(f"--sweep {spec!r}: only loss parameters are swept (loss.<param>), "
                          "so data, model, seed and budget stay identical across runs")
    if len(set(items)) != len(items):
        raise RecipeError(f"--sweep {spec!r}: a value is repeated")
    return key, items


def common_part(recipe: Recipe, *, seeded: bool = False) -> dict[str, Any]:
    """The resolved recipe without what may differ between runs of one comparison (``seed`` too when
    ``seeded``: the comparison runs over several)."""
    data = recipe.model_dump(mode="json")
    data.pop("loss")
    data.pop("output_dir")
    if seeded:
        data.pop("seed")
    return data


def _label(loss: str, params: dict[str, str]) -> str:
    parts = [loss] + [f"{name}{value}" for name, value in params.items()]
    return re.sub(r"[^\w.+-]", "-", "_".join(parts))


def _check_losses_listed(losses: Sequence[str]) -> None:
    if not losses:
        raise RecipeError("--losses: name at least one objective, e.g. dpo,ipo,simpo")
    if len(set(losses)) != len(losses):
        raise RecipeError(f"--losses {','.join(losses)}: an objective is repeated")


def _check_losses_registered(losses: Sequence[str]) -> None:
    known = {spec.name for spec in list_losses()}
    unknown = [name for name in losses if name not in known]
    if unknown:
        raise RecipeError(f"--losses: unknown objective {', '.join(unknown)}; registered: {', '.join(sorted(known))}")


def _loss_param_overrides(overrides: Sequence[str]) -> list[str]:
    """The loss parameters that plain overrides set (``loss.beta=0.2`` -> ``beta``)."""
    names = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("loss", "loss.name") or key.startswith("loss["):
            raise RecipeError(f"override {item!r}: the objective is chosen with --losses in a comparison")
        if key.startswith("loss."):
            names.append(key.split(".", 2)[1])
    return names


def _overrides_without_loss(overrides: Sequence[str]) -> list[str]:
    """The overrides that do not touch the loss section (for the shared part of the recipe)."""
    return [o for o in overrides if not o.split("=", 1)[0].strip().startswith("loss")]


def _sweep_grid(sweeps: Sequence[str]) -> list[Combination]:
    """Every combination of the swept values (one empty combination without sweeps)."""
    parsed = [parse_sweep(s) for s in sweeps]
    if len({k for k, _ in parsed}) != len(parsed):
        raise RecipeError("--sweep: the same parameter is swept twice")
    return list(itertools.product(*[[(k.split(".", 1)[1], v) for v in vals] for k, vals in parsed]))


def _plan_loss(loss: str, grid: list[Combination], *, fixed_params: list[str], overrides: Sequence[str],
               out_dir: Path, load: Callable[[list[str]], Recipe], seeds: Sequence[int]) -> list[PlannedRun]:
    """The runs of one objective: one per combination (and seed), skipped where the loss lacks a parameter."""
    fields = get_loss(loss).config.model_fields
    plans = []
    for combo in grid:
        params = dict(combo)
        group = _label(loss, params)
        missing = [p for p in [*fixed_params, *params] if p not in fields]
        runs: list[int | None] = [*seeds] or [None]  # no --seeds: one run with the recipe's own seed
        for seed in runs:
            label = group if seed is None else f"{group}_seed{seed}"
            if missing:
                have = ", ".join(fields) or "none"
                plans.append(PlannedRun(label, loss, params, None,
                                        f"{loss} has no parameter {', '.join(missing)} (its parameters: {have})",
                                        seed, group))
                continue
            run_overrides = [f"loss={{name: {loss}}}", *overrides, *(f"loss.{k}={v}" for k, v in params.items()),
                             *([] if seed is None else [f"seed={seed}"]), f"output_dir={out_dir / label}"]
            plans.append(PlannedRun(label, loss, params, load(run_overrides), None, seed, group))
    return plans


def _check_same_protocol(base: Recipe, plans: Sequence[PlannedRun], seeded: bool) -> None:
    """The protocol's promise, checked rather than assumed: runs differ only in ``loss``, their folder and
    (over ``--seeds``) their planned seed."""
    reference = common_part(base, seeded=seeded)
    for plan in plans:
        if plan.recipe is None:
            continue
        if common_part(plan.recipe, seeded=seeded) != reference:
            diff = recipe_differences(reference, common_part(plan.recipe, seeded=seeded))
            raise RecipeError(f"run {plan.label} differs from the others outside `loss`: {diff}")
        if seeded and plan.recipe.seed != plan.seed:
            raise RecipeError(f"run {plan.label}: planned with seed {plan.seed}, its recipe has {plan.recipe.seed}")


def plan_comparison(
    recipe_path: str | Path,
    losses: Sequence[str],
    *,
    sweeps: Sequence[str] = (),
    overrides: Sequence[str] = (),
    plugins: Sequence[str] = (),
    out: str | Path | None = None,
    seeds: Sequence[int] = (),
) -> tuple[Path, list[PlannedRun]]:
    """Expand losses x sweep values (x seeds) into resolved recipes, one run folder each under ``out``.

    Args:
        recipe_path: the base recipe; its ``loss`` section is replaced by ``{name: <loss>}``.
        losses: registered objective names, in table order.
        sweeps: ``loss.<param>=v1,v2`` specs; several form a grid. A loss without ``<param>`` skips the
            combination (with a note) rather than failing.
        overrides: dotted overrides applied to every run (``loss.<param>`` ones only to losses that have it).
        plugins: extra plugin files or modules.
        out: comparison folder; default ``runs/compare_<recipe name>`` (``runs/<name>`` if it starts with compare_).
        seeds: train every combination once per seed (the recipe's ``seed``: data order, adapter
            initialisation, sampling), labelled ``<label>_seed<s>``; empty: once, with the recipe's seed.

    Returns:
        (comparison folder, planned runs).

    Raises:
        RecipeError: bad recipe, override, sweep or loss name (nothing has run yet).
    """
    _check_losses_listed(losses)
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds {','.join(map(str, seeds))}: a seed is repeated")
    fixed_params = _loss_param_overrides(overrides)
    grid = _sweep_grid(sweeps)
    # Loading the base recipe imports its plugins and --plugin ones: only then are their losses known.
    base = load_recipe(recipe_path, _overrides_without_loss(overrides), list(plugins))
    _check_losses_registered(losses)
    default = base.name if base.name.startswith("compare_") else f"compare_{base.name}"
    out_dir = Path(out) if out is not None else Path("runs") / default
    load = partial(load_recipe, recipe_path, extra_plugins=list(plugins))
    plans = [plan for loss in losses for plan in _plan_loss(loss, grid, fixed_params=fixed_params,
                                                            overrides=overrides, out_dir=out_dir, load=load,
                                                            seeds=seeds)]
    _check_same_protocol(base, plans, bool(seeds))
    return out_dir, plans
