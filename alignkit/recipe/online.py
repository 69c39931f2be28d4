"""Online recipes: a YAML file with an ``online:`` section, validated as strictly as a preference recipe.

Loading reuses :mod:`alignkit.recipe`'s YAML reading, dotted overrides and ``file:line: path`` errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignkit.eval.config import EvalConfig
from alignkit.models.config import ModelConfig
from alignkit.online.config import OnlineConfig, OnlineTrainConfig, PromptsConfig
from alignkit.peft.config import AdapterConfig, LoRAConfig, NoAdapter
from alignkit.recipe import (
    _describe,
    load_recipe_plugins,
    raise_problems,
    read_recipe_file,
    validation_problems,
)

__all__ = ["OnlineRecipe", "is_online_recipe", "load_online_recipe", "online_recipe_to_yaml"]


class OnlineRecipe(BaseModel):
    """One online experiment: model, adapter, prompts, the online objective, optimisation, evaluation."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(description="Run name; the run folder defaults to runs/<name>.")
    output_dir: str | None = Field(None, description="Run folder (metrics, checkpoints, report).")
    seed: int = Field(0, description="Seed for initialisation, prompt order and sampling.")
    plugins: list[str] = Field(default_factory=list, description="Python files or modules that register rewards.")
    model: ModelConfig = Field(description="The policy model and tokenizer (the initial / SFT model).")
    adapter: AdapterConfig = Field(default_factory=NoAdapter, description="Parameter-efficient module, or none.")
    prompts: PromptsConfig = Field(description="Training and held-out prompts.")
    online: OnlineConfig = Field(description="Rollouts, reward, KL penalty, anchor, optional WARP.")
    train: OnlineTrainConfig = Field(default_factory=OnlineTrainConfig, description="Optimisation.")
    eval: EvalConfig | None = Field(None, description="Reward and KL to the initial model on held-out prompts.")

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def is_online_recipe(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` is a mapping with a top-level ``online:`` key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "online" in data


def _cross_checks(recipe: OnlineRecipe) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    if recipe.online.warp is not None and isinstance(recipe.adapter, LoRAConfig):
        problems.append((("adapter", "kind"), "WARP merges trainable tensors one by one, which is not the merge "
                         "of LoRA's product B A; use adapter.kind bottleneck or none with online.warp"))
    return problems


def load_online_recipe(
    path: str | Path, overrides: list[str] | None = None, extra_plugins: list[str] | None = None
) -> OnlineRecipe:
    """Read, override and validate an online recipe; load its plugins first (they may register rewards).

    Raises:
        RecipeError: every problem as ``file:line: path: message``.
    """
    data, lines = read_recipe_file(path, overrides)
    source = str(path)
    load_recipe_plugins(data, extra_plugins, base_dir=Path(path).parent, lines=lines, source=source)
    try:
        recipe = OnlineRecipe.model_validate(data)
    except ValidationError as err:
        raise_problems(validation_problems(err, lines, source), source)
    raise_problems([_describe(loc, msg, lines, source) for loc, msg in _cross_checks(recipe)], source)
    return recipe


def online_recipe_to_yaml(recipe: OnlineRecipe) -> str:
    """The resolved recipe (defaults filled in), as saved in the run folder."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
