"""Online recipes: a YAML file with an ``online:`` section, validated as strictly as a preference recipe.

Loading reuses :mod:`alignkit.recipe`'s safe YAML reading, dotted overrides, ``file:line: path`` errors and
the checks that need no model (registered rewards, ``model.from_config`` keys, device, run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
)

from alignkit.config_base import dump_plugin_kind, validate_plugin_kind
from alignkit.data.prompt_sources import PROMPT_SOURCES
from alignkit.eval.config import EvalConfig
from alignkit.models.rewards import REWARDS, reads_examples, unknown_settings
from alignkit.online.config import (
    BUILTIN_PROMPTS,
    AccuracyConfig,
    OnlineConfig,
    OnlineTrainConfig,
    PromptsConfig,
    RewardTerm,
)
from alignkit.peft.config import BottleneckConfig, LoRAConfig
from alignkit.recipe import (
    Problem,
    RecipeError,
    RecipeFile,
    environment_problems,
    eval_rewards,
    load_recipe_plugins,
    model_problems,
    quantization_problems,
    raise_problems,
    read_recipe_file,
    reward_problems,
    validation_problems,
)
from alignkit.recipe.model import RunRecipe, recorded_plugins
from alignkit.recipe.source import Location, describe
from alignkit.train.config import DistributedConfig
from alignkit.train.tracker_config import LoggingConfig

__all__ = ["OnlineRecipe", "is_online_recipe", "load_online_recipe", "online_recipe_to_yaml"]


class OnlineRecipe(RunRecipe):
    """One online experiment: model, adapter, prompts, the online objective, optimisation, evaluation."""

    prompts: PromptsConfig = Field(description="Training and held-out prompts; chosen by its 'kind' (a built-in "
                                   "kind, or one a plugin registered with its config class).")
    online: OnlineConfig = Field(description="Rollouts, reward, KL penalty, anchor, optional WARP.")
    train: OnlineTrainConfig = Field(default_factory=OnlineTrainConfig, description="Optimisation.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="How several processes share training (ddp; fsdp is not "
                                           "supported online yet).")
    eval: EvalConfig | None = Field(None, description="Reward and KL to the initial model on held-out prompts.")
    accuracy: AccuracyConfig | None = Field(None, description="Accuracy (pass@k with 95% intervals) on the held-out "
                                            "problems of a verifiable task, before and after training; null: off.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig,
                                   description="Experiment trackers (TensorBoard, W&B, trackio).")

    @field_validator("prompts", mode="wrap")
    @classmethod
    def _plugin_kinds(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return validate_plugin_kind(value, handler, lambda: PROMPT_SOURCES, BUILTIN_PROMPTS)

    @field_serializer("prompts", mode="wrap")
    def _dump_plugin_kinds(self, value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return dump_plugin_kind(value, handler, info, BUILTIN_PROMPTS)

    @field_validator("distributed")
    @classmethod
    def _replicated_only(cls, value: DistributedConfig) -> DistributedConfig:
        # Sampling a sharded policy needs every process to take the same number of decoding steps.
        if value.strategy != "ddp":
            raise ValueError("online training runs with strategy ddp only (replicated weights); fsdp sampling "
                             "is not supported yet")
        return value


def is_online_recipe(path: str | Path | RecipeFile) -> bool:
    """Whether the YAML file at ``path`` (or already parsed) is a mapping with a top-level ``online:`` key."""
    try:
        return RecipeFile.read(path).is_online
    except RecipeError:
        return False  # loading it as a preference recipe reports the problem


def _cross_checks(recipe: OnlineRecipe) -> list[Problem]:
    problems: list[Problem] = quantization_problems(recipe.model, recipe.adapter.kind, recipe.train.device,
                                                    strategy=recipe.distributed.strategy)
    if recipe.online.warp is not None and isinstance(recipe.adapter, LoRAConfig):
        problems.append((("adapter", "kind"), "WARP merges trainable tensors one by one, which is not the merge "
                         "of LoRA's product B A; use adapter.kind bottleneck or none with online.warp"))
    if recipe.eval is not None and recipe.eval.every is not None:
        problems.append((("eval", "every"), "evaluation along training is for offline recipes; an online run "
                         "logs reward and KL on every update in online/metrics.jsonl"))
    if recipe.eval is not None and "chosen" in recipe.eval.baselines:
        problems.append((("eval", "baselines"), "'chosen' judges the policy against the dataset's chosen responses, "
                         "but online prompts have none; use base or reference"))
    if recipe.online.rollout.engine == "server" and isinstance(recipe.adapter, BottleneckConfig):
        problems.append((("online", "rollout", "engine"), "an inference server loads LoRA adapters or full weights, "
                         "not bottleneck adapters; use adapter.kind lora or none"))
    online, ppo = recipe.online, recipe.online.ppo
    # Where a legacy online.ppo section set a value, its problem is reported there.
    section = ("online", "ppo") if ppo is not None else ("online",)
    rollout = recipe.train.prompts_per_step * online.samples_per_prompt
    size = online.minibatch_size
    if size is not None and (size > rollout or rollout % size):
        where = section if ppo is not None and ppo.minibatch_size == size else ("online",)
        problems.append(((*where, "minibatch_size"), f"{size} must divide the {rollout} "
                         "completions of a step (train.prompts_per_step x online.samples_per_prompt)"))
    value = online.value
    if value is not None and value.value_init != "policy" and not (Path(value.value_init) / "config.json").is_file():
        where = (*section, "value_init") if ppo is not None else ("online", "value", "value_init")
        problems.append((where, f"{value.value_init} is not a reward-model folder (no "
                         "config.json); use 'policy' or the folder of an alignkit reward model"))
    located: list[tuple[Location, RewardTerm]] = [(("online", "rewards", i), t)
                                                  for i, t in enumerate(recipe.online.rewards or [])]
    if recipe.accuracy is not None:
        located.append((("accuracy", "reward"), recipe.accuracy.reward))
    terms = {(*loc, "name"): t.name for loc, t in located}
    problems += [(loc, problem) for loc, t in located
                 if t.name in REWARDS and (problem := unknown_settings(t.name, t.settings)) is not None]
    text_only = {("online", "true_reward"): recipe.online.true_reward, **eval_rewards(recipe.eval)}
    problems += reward_problems({("online", "reward"): recipe.online.reward, **terms, **text_only})
    problems += [(loc, f"reward {name!r} reads each prompt's metadata (a reference answer), which is only given "
                  "to online.reward, online.rewards and accuracy.reward (pass@k on held-out problems)")
                 for loc, name in text_only.items() if name is not None and name in REWARDS
                 and reads_examples(REWARDS.get(name))]
    problems += model_problems(recipe.model)
    return problems


def load_online_recipe(
    path: str | Path | RecipeFile, overrides: list[str] | None = None, extra_plugins: list[str] | None = None,
    *, check_environment: bool = True, recipe_plugins: bool = True,
) -> OnlineRecipe:
    """Read, override and validate an online recipe; load its plugins first (they may register rewards).

    Args:
        check_environment: also check this machine can run it (device, run folder).
        recipe_plugins: import the recipe's own ``plugins`` (off for a run folder's saved recipe).

    Raises:
        RecipeError: every problem as ``file:line: path: message``.
    """
    parsed = RecipeFile.read(path)
    data, lines = read_recipe_file(parsed, overrides, OnlineRecipe)
    source = str(parsed.path)
    plugin_files = load_recipe_plugins(data, extra_plugins, base_dir=parsed.path.parent, lines=lines, source=source,
                                       recipe_plugins=recipe_plugins)
    try:
        recipe = OnlineRecipe.model_validate(data)
    except ValidationError as err:
        raise_problems(validation_problems(err, lines, source, OnlineRecipe), source)
        raise AssertionError("unreachable") from err
    recipe._plugin_files = plugin_files
    problems = _cross_checks(recipe)
    if check_environment:
        problems += environment_problems(recipe.run_dir(), ("output_dir",) if recipe.output_dir else ("name",),
                                         {("train", "device"): recipe.train.device},
                                         logging=recipe.logging)
    raise_problems([describe(loc, msg, lines, source) for loc, msg in problems], source)
    return recipe


def online_recipe_to_yaml(recipe: OnlineRecipe) -> str:
    """The resolved recipe (defaults filled in, every plugin imported recorded), as saved in the run folder."""
    return yaml.safe_dump(recorded_plugins(recipe.model_dump(mode="json"), recipe.plugin_files), sort_keys=False)
