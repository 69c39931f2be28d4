"""Recipes: one YAML file per experiment, validated strictly, with dotted command-line overrides.

Every error names its place in the YAML (``train.lr``, ``loss[1].beta``) and, when it comes from the file,
its line, so a typo never ends in a traceback. Validation builds the objective once (kept on the recipe,
:meth:`Recipe.objective`) and checks every rule that spans sections (data kind against loss, reference
against loss and adapter, registered rewards, logged early-stopping metrics, ``model.from_config`` keys,
device, run folder), so ``alignkit validate`` catches them before any model is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from alignkit.config_base import FieldError
from alignkit.losses import Objective, ObjectiveError, build_objective
from alignkit.plugins import PluginError, file_sha256, load_plugins, plugin_record
from alignkit.recipe.model import Recipe, plugin_list, recorded_plugins
from alignkit.recipe.rules import (
    cross_section_problems,
    environment_problems,
    eval_rewards,
    model_problems,
    quantization_problems,
    reward_problems,
)
from alignkit.recipe.schema import clean_loc, fields_of_kind
from alignkit.recipe.source import (
    Location,
    Problem,
    RecipeError,
    RecipeFile,
    describe,
    line_map,
    line_of,
    mark_overrides,
    parse_yaml,
    path_str,
    read_text,
)

__all__ = [
    "Location",
    "Problem",
    "Recipe",
    "RecipeError",
    "RecipeFile",
    "apply_overrides",
    "PLACEMENT_KEYS",
    "comparable_recipes",
    "read_saved_recipe",
    "cross_section_problems",
    "environment_problems",
    "eval_rewards",
    "load_recipe",
    "load_recipe_plugins",
    "model_problems",
    "quantization_problems",
    "parse_yaml",
    "plugin_list",
    "raise_problems",
    "read_recipe_file",
    "read_text",
    "recipe_to_yaml",
    "reward_problems",
    "validate_recipe",
    "validation_problems",
]

# ---------------------------------------------------------------------------------------------------------
# Overrides

def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.replace("]", "").replace("[", ".").split("."):
        if raw == "":
            raise RecipeError(f"override {key!r}: empty key part")
        parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def _switch_kind(node: dict[str, Any], parts: list[str | int], value: Any, schema: type[BaseModel]) -> dict[str, Any]:
    """``node`` with ``kind: value``, keeping only the settings the two kinds share (like ``loss.name=``)."""
    keep = fields_of_kind(schema, parts[:-1], value, node.get("kind"))
    if keep is None or node.get("kind") == value:
        return {**node, "kind": value}
    return {"kind": value, **{k: v for k, v in node.items() if k in keep and k != "kind"}}


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: type[BaseModel] | None = None,
                    applied: list[tuple[tuple[Any, ...], str]] | None = None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a recipe dict, in place.

    ``loss.beta=0.2`` sets a key of a mapping; ``loss[1].weight=0.1`` or ``loss.1.weight`` indexes a list.
    ``loss.name=simpo`` replaces the objective (``loss[1].name=sft`` one term, keeping its weight), dropping
    the old loss's parameters. Likewise ``eval.judge.kind=reward`` switches a section with a ``kind`` and
    keeps only the settings both kinds share (a local judge's ``model`` is dropped: a reward judge's
    ``model`` is another setting of the same name); set the new kind's own after it
    (``eval.judge.kind=reward eval.judge.reward=vader_sentiment``).

    Args:
        data: the recipe as read from YAML.
        overrides: ``key=value`` strings.
        schema: the recipe model (default :class:`Recipe`), which says which settings each kind has.
        applied: if given, receives ``(path, override)`` for each override: the path of what it replaced.

    Raises:
        RecipeError: naming the override, when it is malformed or addresses what is not there.
    """
    schema = schema or Recipe
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value, e.g. train.lr=1e-5")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override {item!r}")[0] if raw.strip() != "" else None
        parts = _parse_key(key.strip())
        if applied is not None:  # a new objective or kind replaces its whole section
            replaces = parts[:-1] if parts[-1] in ("name", "kind") and parts[:1] == ["loss"] or parts[-1] == "kind" \
                else parts
            applied.append((tuple(replaces), item))
        if parts == ["loss", "name"] and isinstance(data.get("loss"), dict):
            # Swapping the objective: the old loss's parameters mean nothing to the new one.
            data["loss"] = {"name": value}
            continue
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = path_str(parts[: depth + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise RecipeError(f"override {item!r}: {where} is not an index of a list of {len(node)}")
                node = node[part]
            elif isinstance(node, dict):
                if isinstance(part, int):
                    raise RecipeError(f"override {item!r}: {path_str(parts[:depth])} is a mapping, not a list; "
                                      f"there is no [{part}]")
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise RecipeError(f"override {item!r}: {where} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise RecipeError(f"override {item!r}: no index {last} in a list of {len(node)}")
        elif not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: cannot set a key inside a value")
        elif isinstance(last, int):
            raise RecipeError(f"override {item!r}: {path_str(parts[:-1])} is a mapping, not a list; there is no "
                              f"[{last}]")
        if last == "name" and len(parts) == 3 and parts[0] == "loss" and isinstance(parts[1], int):
            weight = {"weight": node["weight"]} if "weight" in node else {}
            node.clear()
            node.update({"name": value, **weight})
            continue
        if last == "kind" and isinstance(node, dict):
            switched = _switch_kind(node, parts, value, schema)
            node.clear()
            node.update(switched)
            continue
        node[last] = value
    return data


# ---------------------------------------------------------------------------------------------------------
# Loading

def read_recipe_file(
    path: str | Path | RecipeFile, overrides: list[str] | None = None, schema: type[BaseModel] | None = None
) -> tuple[dict[str, Any], dict]:
    """Read a recipe YAML file and apply dotted overrides.

    Args:
        path: the YAML file, or the file already parsed.
        overrides: ``key=value`` strings (see :func:`apply_overrides`).
        schema: the recipe model the overrides address (default :class:`Recipe`).

    Returns:
        The recipe dict and the map from YAML paths to line numbers (for error messages).

    Raises:
        RecipeError: missing or unreadable file, invalid or unsafe YAML (see :func:`parse_yaml`), not a
            mapping, or a malformed override.
    """
    parsed = RecipeFile.read(path)
    path, data, node = parsed.path, copy.deepcopy(parsed.data), parsed.node
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else type(data).__name__
        raise RecipeError(f"{path}: a recipe is a YAML mapping (key: value lines), got {kind}")
    applied: list[tuple[tuple[Any, ...], str]] = []
    data = apply_overrides(data, overrides or [], schema, applied)
    return data, mark_overrides(line_map(node), applied)


def _recorded_file(entry: dict[str, Any], where: str) -> str:
    """The path of a plugin file a run recorded (``{path, sha256}``), once its bytes are checked to match."""
    path, digest = entry.get("path"), entry.get("sha256")
    if not isinstance(path, str) or not isinstance(digest, str) or set(entry) != {"path", "sha256"}:
        raise PluginError(f"{where}: a recorded plugin is {{path, sha256}}, got {entry!r}")
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"{where}: the run used plugin {path} (sha256 {digest}), which no longer exists")
    if (found := file_sha256(file)) != digest:
        raise PluginError(f"{where}: plugin {path} changed since the run used it (sha256 {digest} then, "
                          f"{found} now); refusing to import another version")
    return path


def load_recipe_plugins(data: dict[str, Any], extra: list[str] | None, *, base_dir: Path | None, lines: dict,
                        source: str, recipe_plugins: bool = True) -> list[dict[str, str] | str]:
    """Import the recipe's ``plugins`` (and ``extra`` ones) before validation, so what they register exists.

    Args:
        recipe_plugins: import the recipe's own ``plugins``; off for a run folder's saved recipe, which is
            data: only ``extra`` (``--plugin``, named by the user) is imported then.

    Returns:
        What was imported (:func:`~alignkit.plugins.plugin_record`): ``{path, sha256}`` of each file, the
        name of each module.

    Raises:
        RecipeError: naming ``plugins`` (or ``--plugin``), when one is missing, changed since a run recorded
            it, or fails to import.
    """
    specs = plugin_list(data.get("plugins") or [])
    if not isinstance(specs, list) or not all(isinstance(s, str | dict) for s in specs):
        raise RecipeError(describe(("plugins",), "expected a list of .py files or module names, e.g. "
                                    f"[my_losses.py], got {specs!r}", lines, source))
    records: list[dict[str, str] | str] = []
    groups: list[tuple[str, list[Any], Path | None]] = [("--plugin", list(extra or []), None)]
    if recipe_plugins:
        groups.insert(0, ("plugins", specs, base_dir))
    for field, group, folder in groups:
        try:
            named = [_recorded_file(s, f"{field}[{i}]") if isinstance(s, dict) else s for i, s in enumerate(group)]
            modules = load_plugins(named, base_dir=folder)
        except PluginError as err:
            raise RecipeError(describe((field,), str(err), lines, source) if field == "plugins"
                              else f"--plugin: {err}") from None
        records += [plugin_record(m) for m in modules if plugin_record(m) not in records]
    return records


def validation_problems(err: ValidationError, lines: dict, source: str, schema: type[BaseModel] | None = None) -> list[str]:
    """pydantic errors as ``file:line: path: message`` lines."""
    return [describe(loc, msg, lines, source) for loc, msg in _pydantic_problems(err, schema or Recipe)]


def _pydantic_problems(err: ValidationError, schema: type[BaseModel]) -> list[Problem]:
    """Each error at its path: a validator's :class:`~alignkit.config_base.FieldError` at the field it names."""
    def problem(e: Any) -> Problem:
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, FieldError):
            return clean_loc((*e["loc"], *error.where), schema), error.detail
        return clean_loc(tuple(e["loc"]), schema), e["msg"].removeprefix("Value error, ")

    return [problem(e) for e in err.errors()]


def raise_problems(problems: list[str], source: str) -> None:
    """Raise one RecipeError listing every problem (no-op when there are none)."""
    if problems:
        unique = list(dict.fromkeys(problems))
        header = f"{source or 'recipe'}: {len(unique)} problem{'s' if len(unique) > 1 else ''}"
        raise RecipeError(header + "\n" + "\n".join(f"  - {p}" for p in unique))


def load_recipe(
    path: str | Path | RecipeFile,
    overrides: list[str] | None = None,
    extra_plugins: list[str] | None = None,
    *,
    check_environment: bool = True,
    recipe_plugins: bool = True,
) -> Recipe:
    """Read, override, validate a recipe; load its plugins first so plugin losses validate.

    Args:
        path: the YAML file.
        overrides: ``key=value`` strings.
        extra_plugins: plugins named on the command line (``--plugin``), relative to the current folder.
        check_environment: also check this machine can run it (device, run folder); off to read a recipe
            saved by a run elsewhere.
        recipe_plugins: import the recipe's own ``plugins``; off for a run folder's saved recipe (a folder
            is data: only ``extra_plugins``, named by the user, run).

    Raises:
        RecipeError: with every problem listed as ``file:line: path: message``.
    """
    parsed = RecipeFile.read(path)
    data, lines = read_recipe_file(parsed, overrides)
    return validate_recipe(data, lines=lines, source=str(parsed.path), base_dir=parsed.path.parent,
                           extra_plugins=extra_plugins, check_environment=check_environment,
                           recipe_plugins=recipe_plugins)


def validate_recipe(
    data: dict[str, Any],
    *,
    lines: dict | None = None,
    source: str = "",
    base_dir: Path | None = None,
    extra_plugins: list[str] | None = None,
    check_environment: bool = True,
    recipe_plugins: bool = True,
) -> Recipe:
    """Validate a recipe dict (already overridden): every section, the objective (built here, once, and
    kept on the recipe), and the rules between sections. See :func:`load_recipe`."""
    lines = lines or {}
    plugin_files = load_recipe_plugins(data, extra_plugins, base_dir=base_dir, lines=lines, source=source,
                                       recipe_plugins=recipe_plugins)
    problems: list[Problem] = []
    objective: Objective | None = None
    if data.get("loss") is not None:
        try:
            objective = build_objective(data["loss"])
        except ObjectiveError as err:
            problems += err.problems
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        found = _pydantic_problems(err, Recipe)
        if "loss" in data and data["loss"] is not None:  # the objective's own messages say it better
            found = [(loc, msg) for loc, msg in found if loc[:1] != ("loss",)]
        problems += found
    if recipe is not None and objective is not None:
        recipe._set_objective(objective)
        recipe._plugin_files = plugin_files
        problems += cross_section_problems(recipe)
        if check_environment:
            problems += environment_problems(recipe.run_dir(), ("output_dir",) if recipe.output_dir else ("name",),
                                             {("train", "device"): recipe.train.device},
                                             logging=recipe.logging)
    problems.sort(key=lambda p: line_of(p[0], lines) or 1 << 30)  # in file order; overrides last
    raise_problems([describe(loc, msg, lines, source) for loc, msg in problems], source)
    assert recipe is not None
    return recipe


# ---------------------------------------------------------------------------------------------------------
# Writing and comparing

def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in, every plugin imported recorded) as YAML, as saved in the run
    folder."""
    return yaml.safe_dump(recorded_plugins(recipe.model_dump(mode="json"), recipe.plugin_files), sort_keys=False)


ModelT = TypeVar("ModelT", bound=BaseModel)


def read_saved_recipe(saved: Path, schema: type[ModelT]) -> ModelT | None:
    """A run folder's saved recipe read through ``schema`` alone: no plugin is imported (a run folder is
    data, not code), so a recipe that needs a plugin's loss or reward to validate reads as None.

    Raises:
        RecipeError: the file is not safe YAML (aliases beyond the budget, duplicate keys, too deep...).
    """
    data = parse_yaml(read_text(saved), str(saved))[0]
    if not isinstance(data, dict):
        return None
    try:
        return schema.model_validate(data)
    except ValidationError:
        return None


# Settings of ``distributed`` that say where the work runs, not what is computed (mixed_precision stays).
PLACEMENT_KEYS = ("strategy", "reshard_after_forward", "cpu_offload", "mesh")


def comparable_recipes(saved: Path, current: Any, schema: type[BaseModel],
                       dump: Callable[[Any], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's saved recipe and ``current`` as plain dicts that compare equal when they mean the same.

    The saved file is read back through the schema (:func:`read_saved_recipe`, which imports no plugin,
    then ``dump``), so a setting added since the folder was written reads as its default; when the schema
    cannot read it, the file's own keys are compared. ``output_dir`` is dropped from both, since the same
    folder may be spelt relative or absolute, and so is how the processes place the work
    (:data:`PLACEMENT_KEYS` of ``distributed``): a checkpoint holds full tensors, so a run resumes under
    either strategy and on any number of processes.
    """
    normalised = read_saved_recipe(saved, schema)
    old = yaml.safe_load(dump(normalised)) if normalised is not None else parse_yaml(read_text(saved), str(saved))[0]
    old = old if isinstance(old, dict) else {}
    new = yaml.safe_load(dump(current))
    for recipe in (old, new):
        recipe.pop("output_dir", None)
        distributed = recipe.get("distributed")
        if isinstance(distributed, dict):
            for key in PLACEMENT_KEYS:
                distributed.pop(key, None)
    return old, new
