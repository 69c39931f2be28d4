"""Rules between the sections of a recipe, and what this machine must offer to run it.

Each rule gives its problems as ``(location, message)``, the location being the setting to change, so
``alignkit validate`` reports them with their line before any model is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.data import SOURCES
from alignkit.data.sources import sources_feeding
from alignkit.eval.config import EvalConfig
from alignkit.lazy import lazy_module
from alignkit.losses import BATCH_KINDS, BatchKind, Objective, build_objective, losses_reading
from alignkit.models.config import ModelConfig
from alignkit.models.rewards import REWARDS
from alignkit.recipe.model import Recipe
from alignkit.recipe.source import Location, Problem
from alignkit.train.config import TrainConfig
from alignkit.train.tracker_config import LoggingConfig, missing_tracker_packages

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["ADAPTERS_OFF_AFTER_SFT", "cross_section_problems", "environment_problems", "eval_rewards", "model_problems",
           "quantization_problems", "reward_problems", "unused_reference_note"]

# reference.mode adapters_off with an SFT stage: the base model would stand in for the SFT model.
ADAPTERS_OFF_AFTER_SFT = (
    "'adapters_off' uses the base model under the adapter, but the reference of an SFT run is the SFT model "
    "(sft.enabled is true, and the SFT stage trains the adapter); use copy or cached")


def reward_problems(rewards: dict[Location, str | None]) -> list[Problem]:
    """Each named reward must be registered (after plugins are loaded)."""
    known = ", ".join(REWARDS.names()) or "(none)"
    return [(loc, f"unknown reward function {name!r}; registered: {known} (a plugin can register more)")
            for loc, name in rewards.items() if name is not None and name not in REWARDS]


def model_problems(model: ModelConfig, *, reward_model: bool = False, max_length: int | None = None) -> list[Problem]:
    """``model.from_config``: keys its transformers config knows, a model that can be built, long enough."""
    if model.from_config is None:
        return []
    from alignkit.models.load import check_from_config  # builds a transformers config: imports transformers

    config, found = check_from_config(model.from_config, reward_model=reward_model)
    problems: list[Problem] = [(("model", "from_config", *loc), msg) for loc, msg in found]
    positions = getattr(config, "max_position_embeddings", None) if config is not None else None
    if max_length is not None and isinstance(positions, int) and max_length > positions:
        problems.append((("data", "max_length"), f"{max_length} is more than the model's {positions} positions "
                         "(model.from_config); lower it or give the model more positions"))
    return problems


def quantization_problems(model: ModelConfig, adapter_kind: str, device: str,
                          reference_mode: str | None = None, strategy: str = "ddp") -> list[Problem]:
    """A quantized base (``model.quantization``) is frozen: an adapter trains on it, its reference is itself.

    Args:
        device: ``train.device`` (``auto`` means cuda when this machine has one).
        reference_mode: ``reference.mode`` of a preference recipe (None for an online recipe).
        strategy: ``distributed.strategy``.
    """
    quant = model.quantization
    if quant is None:
        return []
    loc: Location = ("model", "quantization")
    problems: list[Problem] = []
    if adapter_kind == "none":
        problems.append((loc, f"{quant.describe()} freezes the base's linear layers as integers, so full fine-tuning "
                         "cannot train them; set adapter.kind to lora or bottleneck, or remove model.quantization"))
    if reference_mode == "copy":
        problems.append((("reference", "mode"), "'copy' loads a second quantized base, but with model.quantization "
                         "the policy with its adapters off is that base; use adapters_off (or cached)"))
    if strategy == "fsdp":
        problems.append((("distributed", "strategy"), "fsdp does not shard quantized weights; use ddp, or remove "
                         "model.quantization"))
    from alignkit.models.quantization import device_problem  # quantized recipes only: imports torch

    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if _device_problem(resolved) is None and (why := device_problem(quant, resolved)) is not None:
        problems.append((("model", "quantization", "backend"), why.partition(": ")[2]))
    return problems


def _device_problem(name: str) -> str | None:
    if name in ("auto", "cpu"):  # always there: no need to import torch to know
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device; use auto, cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"{name!r}, but this machine has no CUDA device; use auto or cpu"
        if device.index is not None and device.index >= count:
            return f"{name!r}, but this machine has {count} CUDA device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
        return None
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available = torch.backends.mps.is_available
    if available is None or not available():
        return f"{name!r} is not available on this machine; use auto, cpu or cuda"
    return None


def _run_dir_problem(run_dir: Path) -> str | None:
    path = run_dir.expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            return f"{run_dir} exists and is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{run_dir}: no permission to write in it"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{run_dir} cannot be created: {parent} is not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{run_dir} cannot be created: no permission to write in {parent}"
            return None
    return None


def environment_problems(run_dir: Path, run_dir_loc: Location, devices: dict[Location, str],
                         logging: LoggingConfig | None = None) -> list[Problem]:
    """What this machine must offer: the devices named, a run folder that can be written, and the packages
    of the experiment trackers ``logging`` turns on."""
    problems: list[Problem] = []
    if (why := _run_dir_problem(run_dir)) is not None:
        problems.append((run_dir_loc, why))
    problems += [(loc, why) for loc, name in devices.items() if (why := _device_problem(name)) is not None]
    if logging is not None:
        problems += [(("logging", field), why) for field, why in missing_tracker_packages(logging)]
    return problems


def _early_stopping_problems(recipe: Recipe, objective: Objective) -> list[Problem]:
    problems: list[Problem] = []
    held_out = recipe.data.test_source is not None or recipe.data.test_size != 0
    stages: list[tuple[str, TrainConfig, Objective, bool]] = [("train", recipe.train, objective, True)]
    if recipe.sft.enabled:
        stages.append(("sft", recipe.sft, build_objective({"name": "sft"}), False))
    for section, cfg, stage_objective, paired in stages:
        es = cfg.early_stopping
        if es is None:
            continue
        loc: Location = (section, "early_stopping", "metric")
        if not held_out:
            problems.append(((section, "early_stopping"), "needs held-out pairs, but data.test_size is 0 and there "
                             "is no data.test_source"))
            continue
        from alignkit.train.metrics import stage_metric_names  # runs the objective on a made-up batch: torch

        logged = stage_metric_names(stage_objective, paired=paired)
        names = logged.eval
        if es.metric in names or (not logged.complete and es.metric.startswith("eval/")):
            continue
        hint = f" (did you mean 'eval/{es.metric}'?)" if f"eval/{es.metric}" in names else ""
        problems.append((loc, f"{es.metric!r} is never logged{hint}; the held-out metrics of this stage are: "
                         f"{', '.join(names)}"))
    return problems


def _readers(kinds: tuple[BatchKind, ...]) -> str:
    return ", ".join(s.name for k in kinds for s in losses_reading(k)) or "(none registered)"


def _data_problems(recipe: Recipe, objective: Objective) -> list[Problem]:
    """A data source feeds the batch kind the objective reads (its own items, or pairs split)."""
    problems: list[Problem] = []
    kind = objective.inputs
    for field in ("source", "test_source"):
        source = getattr(recipe.data, field)
        if source is None or source.kind not in SOURCES:
            continue
        spec = SOURCES.get(source.kind)
        if not kind.fed_by(spec.feeds):
            gives = spec.feeds[0].items
            problems.append((("data", field, "kind"), f"{source.kind!r} gives {gives}, which only a loss reading "
                             f"{' or '.join(map(str, spec.feeds))} reads ({_readers(spec.feeds)}); loss "
                             f"{objective.name} reads {kind} ({kind.items}): use a source that gives them "
                             f"({', '.join(sources_feeding(kind))})"))
        # A source that samples its pairs (spec.needs_model) under a reward-model loss samples them from the
        # causal LM of the same weights (alignkit.commands.run), e.g. the SFT model a reward model starts from.
    return problems


def _split_problems(recipe: Recipe, objective: Objective) -> list[Problem]:
    """``data.unpaired`` splits pairs only for a kind made by splitting them; such a kind has no SFT stage."""
    problems: list[Problem] = []
    kind, split = objective.inputs, recipe.data.unpaired
    made_by_split = tuple(BATCH_KINDS.get(k) for k in BATCH_KINDS if BATCH_KINDS.get(k).split_from is not None)
    if split is True and kind.split_from is None:
        items = " or ".join(k.items for k in made_by_split)
        problems.append((("data", "unpaired"), f"true splits pairs into {items}, which only a loss reading "
                         f"{' or '.join(map(str, made_by_split))} reads ({_readers(made_by_split)}); loss "
                         f"{objective.name} reads {kind}"))
    source = SOURCES.get(recipe.data.source.kind) if recipe.data.source.kind in SOURCES else None
    pairs = kind.split_from
    if split is False and source is not None and pairs is not None and pairs in source.feeds and kind not in source.feeds:
        problems.append((("data", "unpaired"), f"false, but loss {objective.name} reads {kind.items} and "
                         f"data.source ({recipe.data.source.kind}) gives {pairs.items}; set it to true "
                         "(or leave it unset) to split each pair into a desirable and an undesirable example"))
    if not kind.sft_first and recipe.sft.enabled:
        problems.append((("sft", "enabled"), f"an SFT stage before loss {objective.name} (it reads {kind}) is not "
                         "supported; set sft.enabled to false"))
    return problems


def cross_section_problems(recipe: Recipe) -> list[Problem]:
    """Rules between sections of a validated recipe, each at the location to change."""
    objective = recipe.objective()
    problems = _data_problems(recipe, objective) + _split_problems(recipe, objective)
    mode = recipe.reference.mode
    if mode == "none" and objective.needs_reference:
        needing = ", ".join(t.name for t in objective.terms if t.needs_reference)
        problems.append((("reference", "mode"), f"'none', but loss {needing} needs a reference (its log-probs); use "
                         "copy, cached or (with an adapter) adapters_off"))
    if mode == "adapters_off" and recipe.adapter.kind == "none":
        problems.append((("reference", "mode"), "'adapters_off' uses the policy with its adapter switched off, but "
                         "adapter.kind is none; set adapter.kind to bottleneck or lora, or use copy or cached"))
    if mode == "adapters_off" and recipe.sft.enabled:
        problems.append((("reference", "mode"), ADAPTERS_OFF_AFTER_SFT))
    rewards: dict[Location, str | None] = {}
    for field in ("source", "test_source"):
        source = getattr(recipe.data, field)
        if source is not None and source.kind == "sentiment":
            rewards[("data", field, "reward")] = source.reward
    rewards.update(eval_rewards(recipe.eval))
    problems += reward_problems(rewards)
    problems += _early_stopping_problems(recipe, objective)
    problems += model_problems(recipe.model, reward_model=objective.inputs.reward_model,
                               max_length=recipe.data.max_length)
    problems += quantization_problems(recipe.model, recipe.adapter.kind, recipe.train.device,
                                      reference_mode=mode if objective.needs_reference else None,
                                      strategy=recipe.distributed.strategy)
    return problems


def unused_reference_note(recipe: Recipe) -> str | None:
    """A note when the recipe sets ``reference.mode`` but its objective reads no reference log-probs.

    Not an error: one recipe often serves several objectives (``alignkit compare --losses dpo,simpo``), and
    the mode is simply not used for training then.
    """
    objective, mode = recipe.objective(), recipe.reference.mode
    if objective.needs_reference or mode == "none" or "mode" not in recipe.reference.model_fields_set:
        return None
    return (f"reference.mode '{mode}' is not used for training: loss {objective.describe()} reads no reference "
            "log-probs, so no reference model is loaded for it (held-out KL, when evaluated, is still measured "
            "against the reference model)")


def eval_rewards(cfg: EvalConfig | None) -> dict[Location, str | None]:
    """The reward functions an ``eval`` section names, by location."""
    if cfg is None:
        return {}
    rewards: dict[Location, str | None] = {("eval", "reward"): cfg.reward}
    if cfg.judge.kind == "reward":
        rewards[("eval", "judge", "reward")] = getattr(cfg.judge, "reward", None)
    return rewards
