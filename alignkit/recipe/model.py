"""The :class:`Recipe` schema: one experiment's sections, and the objective validation built for it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, field_validator

from alignkit.config_base import SEED_MAX, StrictConfig
from alignkit.data.config import DataConfig
from alignkit.eval.config import EvalConfig
from alignkit.losses import Objective, build_objective
from alignkit.models.config import ModelConfig, ReferenceConfig
from alignkit.peft.config import AdapterConfig, NoAdapter
from alignkit.train.config import DistributedConfig, SFTConfig, TrainConfig
from alignkit.train.tracker_config import LoggingConfig

__all__ = ["PLUGINS_DESCRIPTION", "RUN_NAME_DESCRIPTION", "LossSection", "PluginFile", "PluginSpec", "Recipe",
           "RunRecipe", "plugin_list", "recorded_plugins", "run_name"]

LossSection = dict[str, Any] | list[dict[str, Any]]


def plugin_list(value: Any) -> Any:
    """A recipe's ``plugins`` value with one name alone taken as a list of one (``plugins=my_losses.py``
    on the command line is one plugin, not a list of letters)."""
    return [value] if isinstance(value, str) else value


class PluginFile(StrictConfig):
    """A plugin file as a run folder's recipe records it: where it was and exactly what it held."""

    path: str = Field(description="The file's absolute path.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of its bytes; a file that no longer "
                        "matches is refused.")


# What `plugins` lists: a .py path or module name as written, or a file recorded by a run.
PluginSpec = str | PluginFile

PLUGINS_DESCRIPTION = (
    "Python files (relative to the recipe) or modules that register losses, rewards or online parts. They are imported, so a recipe "
    "from someone else runs their code: read them first. One name alone is a list of one. The recipe a run "
    "saves lists every plugin it imported (these and --plugin ones) as {path, sha256}; `alignkit eval` and "
    "`serve` never import a run folder's plugins: name them with --plugin."
)


def recorded_plugins(data: dict[str, Any], records: list[dict[str, str] | str]) -> dict[str, Any]:
    """A recipe dump with ``plugins`` replaced by what was imported for it (nothing replaced when none was)."""
    if records:
        data["plugins"] = list(records)
    return data


RUN_NAME_DESCRIPTION = (
    "Run name; the run folder defaults to runs/<name>. A plain folder name: no path separator, not '.' or "
    "'..' (output_dir chooses any folder)."
)


def run_name(value: str) -> str:
    """A recipe's ``name``, checked to be one plain folder name, so that ``runs/<name>`` lies inside ``runs/``.

    Raises:
        ValueError: ``value`` is empty, ``.`` or ``..``, or holds a path separator (``/``, ``\\``, which
            an absolute path or ``../`` does too) or a NUL character; pydantic reports it under ``name``.
    """
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(
            f"{value!r} is not a plain folder name, and the default run folder runs/<name> must lie inside "
            "runs/: use a name without '/' or '\\' (not '.' or '..'), and set output_dir to choose any folder"
        )
    return value


class RunRecipe(StrictConfig):
    """The fields every recipe that trains has, first in its file: the run, its plugins, the model, the adapter.

    :class:`Recipe` (offline) and :class:`~alignkit.recipe.online.OnlineRecipe` add their own sections after
    these.
    """

    name: str = Field(description=RUN_NAME_DESCRIPTION)
    output_dir: str | None = Field(None, description="Run folder (checkpoints, metrics, report).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for data order, initialisation and sampling.")
    plugins: list[PluginSpec] = Field(default_factory=list, description=PLUGINS_DESCRIPTION)
    model: ModelConfig = Field(description="The policy model and tokenizer.")
    adapter: AdapterConfig = Field(default_factory=NoAdapter, description="Parameter-efficient module, or none.")

    # The plugin files imported for this recipe: set by validation, not part of the YAML.
    _plugin_files: list[dict[str, str] | str] = PrivateAttr(default_factory=list)

    _plugins_as_list = field_validator("plugins", mode="before")(plugin_list)
    _name_is_a_folder_name = field_validator("name")(run_name)

    @property
    def plugin_files(self) -> list[dict[str, str] | str]:
        """The plugins imported while validating this recipe, in order: ``{path, sha256}`` of a file, the
        name of a module."""
        return list(self._plugin_files)

    def run_dir(self) -> Path:
        """``output_dir``, or ``runs/<name>`` when it is not set."""
        return Path(self.output_dir or f"runs/{self.name}")


class Recipe(RunRecipe):
    """One experiment: data, model, adapter, stages, objective and evaluation."""

    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="Where reference log-probs come from.")
    data: DataConfig = Field(description="Preference data and tokenization.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Optional SFT stage before preference training.")
    loss: LossSection = Field(description="Objective: {name, **params} or a weighted list of them.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Preference-training optimisation.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="How several processes share every stage (ddp or fsdp).")
    eval: EvalConfig | None = Field(None, description="Reward and KL evaluation after training.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig,
                                   description="Experiment trackers (TensorBoard, W&B, trackio).")

    # The objective built from `loss` (with the section it was built from): set by validation, not part of
    # the YAML.
    _objective: Objective | None = PrivateAttr(default=None)
    _objective_section: Any = PrivateAttr(default=None)

    def objective(self) -> Objective:
        """The objective of ``loss``: the one validation built, the same object on every call.

        A recipe made without :func:`validate_recipe` (or whose ``loss`` was replaced since) builds it here.
        """
        if self._objective is None or self._objective_section != self.loss:
            self._set_objective(build_objective(self.loss))
        assert self._objective is not None
        return self._objective

    def _set_objective(self, objective: Objective) -> None:
        self._objective = objective
        self._objective_section = copy.deepcopy(self.loss)
