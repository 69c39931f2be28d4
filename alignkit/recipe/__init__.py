"""Recipes: one YAML file per experiment, validated strictly, with dotted command-line overrides.

Every error names its place in the YAML (``train.lr``, ``loss[1].beta``) and, when it comes from the file,
its line, so a typo never ends in a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignkit.data.config import DataConfig
from alignkit.eval.config import EvalConfig
from alignkit.losses import Objective, ObjectiveError, build_objective
from alignkit.models.config import ModelConfig, ReferenceConfig
from alignkit.peft.config import AdapterConfig, NoAdapter
from alignkit.plugins import load_plugins
from alignkit.train.config import SFTConfig, TrainConfig

__all__ = [
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "comparable_recipes",
    "load_recipe",
    "load_recipe_plugins",
    "raise_problems",
    "read_recipe_file",
    "recipe_to_yaml",
    "validate_recipe",
    "validation_problems",
]

LossSection = dict[str, Any] | list[dict[str, Any]]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message lists every problem with its YAML path and line."""


class Recipe(BaseModel):
    """One experiment: data, model, adapter, stages, objective and evaluation."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(description="Run name; the run folder defaults to runs/<name>.")
    output_dir: str | None = Field(None, description="Run folder (checkpoints, metrics, report).")
    seed: int = Field(0, description="Seed for data order, initialisation and sampling.")
    plugins: list[str] = Field(
        default_factory=list, description="Python files (relative to the recipe) or modules that register losses."
    )
    model: ModelConfig = Field(description="The policy model and tokenizer.")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="Where reference log-probs come from.")
    adapter: AdapterConfig = Field(default_factory=NoAdapter, description="Parameter-efficient module, or none.")
    data: DataConfig = Field(description="Preference data and tokenization.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Optional SFT stage before preference training.")
    loss: LossSection = Field(description="Objective: {name, **params} or a weighted list of them.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Preference-training optimisation.")
    eval: EvalConfig | None = Field(None, description="Reward and KL evaluation after training.")

    def objective(self) -> Objective:
        return build_objective(self.loss)

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


# ---------------------------------------------------------------------------------------------------------
# YAML paths and line numbers

def _path_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _line_map(node: yaml.Node | None, path: tuple[Any, ...] = (), lines: dict | None = None) -> dict:
    """Map every YAML path (tuple of keys / indices) to its 1-based line number."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            lines[sub] = key.start_mark.line + 1
            _line_map(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines[(*path, i)] = value.start_mark.line + 1
            _line_map(value, (*path, i), lines)
    return lines


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union-member tags in the location (e.g. "hh_rlhf", "function-after[...]"); drop them.
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "-" not in p and p != "tagged-union"))


def _describe(loc: tuple[Any, ...], message: str, lines: dict, source: str) -> str:
    line = None
    for n in range(len(loc), 0, -1):
        line = lines.get(tuple(loc[:n]))
        if line is not None:
            break
    where = f"{source}:{line}: " if line is not None and source else ""
    return f"{where}{_path_str(loc)}: {message}"


# ---------------------------------------------------------------------------------------------------------
# Overrides

def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in key.replace("]", "").replace("[", ".").split("."):
        if raw == "":
            raise RecipeError(f"override {key!r}: empty key part")
        parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a recipe dict, in place.

    ``loss.beta=0.2`` sets a key of a mapping; ``loss[1].weight=0.1`` or ``loss.1.weight`` indexes a list.
    ``loss.name=simpo`` on a single loss replaces the objective, dropping the old loss's parameters.
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value, e.g. train.lr=1e-5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise RecipeError(f"override {item!r}: value is not valid YAML ({err})") from None
        parts = _parse_key(key.strip())
        if parts == ["loss", "name"] and isinstance(data.get("loss"), dict):
            # Swapping the objective: the old loss's parameters mean nothing to the new one.
            data["loss"] = {"name": value}
            continue
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = _path_str(tuple(parts[: depth + 1]))
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise RecipeError(f"override {item!r}: {where} is not an index of a list of {len(node)}")
                node = node[part]
            elif isinstance(node, dict):
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
        node[last] = value
    return data


# ---------------------------------------------------------------------------------------------------------
# Loading

def read_recipe_file(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], dict]:
    """Read a recipe YAML file and apply dotted overrides.

    Returns:
        The recipe dict and the map from YAML paths to line numbers (for error messages).

    Raises:
        RecipeError: missing file, invalid YAML, not a mapping, or a malformed override.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML:\n{err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (key: value lines), got {type(data).__name__}")
    return apply_overrides(data, overrides or []), _line_map(node)


def load_recipe_plugins(data: dict[str, Any], extra: list[str] | None, *, base_dir: Path | None, lines: dict,
                        source: str) -> None:
    """Import the recipe's ``plugins`` (and ``extra`` ones) before validation, so what they register exists."""
    try:
        load_plugins(list(data.get("plugins") or []) + list(extra or []), base_dir=base_dir)
    except Exception as err:  # noqa: BLE001 - any plugin failure is reported as a recipe problem
        raise RecipeError(_describe(("plugins",), str(err), lines, source)) from None


def validation_problems(err: ValidationError, lines: dict, source: str) -> list[str]:
    """pydantic errors as ``file:line: path: message`` lines."""
    return [_describe(_clean_loc(tuple(e["loc"])), e["msg"], lines, source) for e in err.errors()]


def raise_problems(problems: list[str], source: str) -> None:
    """Raise one RecipeError listing every problem (no-op when there are none)."""
    if problems:
        header = f"{source or 'recipe'}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise RecipeError(header + "\n" + "\n".join(f"  - {p}" for p in sorted(set(problems))))


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    extra_plugins: list[str] | None = None,
) -> Recipe:
    """Read, override, validate a recipe; load its plugins first so plugin losses validate.

    Raises:
        RecipeError: with every problem listed as ``file:line: path: message``.
    """
    data, lines = read_recipe_file(path, overrides)
    return validate_recipe(data, lines=lines, source=str(path), base_dir=Path(path).parent,
                           extra_plugins=extra_plugins)


def validate_recipe(
    data: dict[str, Any],
    *,
    lines: dict | None = None,
    source: str = "",
    base_dir: Path | None = None,
    extra_plugins: list[str] | None = None,
) -> Recipe:
    """Validate a recipe dict (already overridden). See :func:`load_recipe`."""
    lines = lines or {}
    load_recipe_plugins(data, extra_plugins, base_dir=base_dir, lines=lines, source=source)
    problems: list[str] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems += validation_problems(err, lines, source)
    if "loss" in data and data["loss"] is not None:
        try:
            build_objective(data["loss"])
        except ObjectiveError as err:
            for message in str(err).splitlines():
                loc_text, _, msg = message.partition(": ")
                problems.append(_describe(tuple(_parse_key(loc_text)) if msg else ("loss",),
                                          msg or message, lines, source))
    raise_problems(problems, source)
    assert recipe is not None
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML, as saved in the run folder."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def comparable_recipes(saved: Path, current: Any, load: Callable[[Path], Any],
                       dump: Callable[[Any], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's saved recipe and ``current`` as plain dicts that compare equal when they mean the same.

    The saved file is read back through the schema (``load`` then ``dump``), so a setting added since the
    folder was written reads as its default; ``output_dir`` is dropped from both, since the same folder
    may be spelt relative or absolute.
    """
    try:
        old = yaml.safe_load(dump(load(saved)))
    except RecipeError:
        old = yaml.safe_load(saved.read_text()) or {}
    new = yaml.safe_load(dump(current))
    old.pop("output_dir", None)
    new.pop("output_dir", None)
    return old, new
