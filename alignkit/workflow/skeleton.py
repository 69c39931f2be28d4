"""The one sequence every run follows, offline or online; what differs is a :class:`RunPlan`.

    device and processes -> lock the run folder -> decide (start, resume, or refuse) -> plan.preflight
    -> seeds -> tokenizer and policy -> claim the folder (marker, recipe.yaml) -> trackers -> plan.prepare
    -> adapter -> plan.train (stages) -> model/ -> plan.evaluate -> report.json, report.md, plots

Nothing is written into the folder before the model has loaded: a model that fails to load leaves the folder
as it was (an empty one is removed again with its lock), so the same command runs again without --overwrite.

Only the main process writes files; every process trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from pydantic import BaseModel
from rich.console import Console

from alignkit.cache import write_atomic
from alignkit.eval.judges.keys import check_judge_environment
from alignkit.jsonio import read_json
from alignkit.models.load import check_vocabulary, load_causal_lm
from alignkit.models.precision import resolve_precision, stored_precision
from alignkit.peft import apply_adapter, count_parameters, format_parameter_table, parameter_table
from alignkit.peft.config import AdapterConfig
from alignkit.recipe import RecipeError
from alignkit.report.tables import write_report
from alignkit.timing import PhaseClock, phase, recording
from alignkit.train.config import DistributedConfig
from alignkit.train.distributed import DistEnv, init_distributed
from alignkit.train.dropout import disable_dropout
from alignkit.train.summary import StageSummary
from alignkit.train.tracker_config import missing_tracker_packages
from alignkit.train.trackers import Tracker, open_trackers, tracking
from alignkit.workflow.environment import peak_rss_mib, resolve_device, rng_preserved, seed_everything
from alignkit.workflow.folder_lock import run_folder_lock
from alignkit.workflow.inputs import missing_inputs
from alignkit.workflow.model_io import save_model
from alignkit.workflow.run_folder import (
    RUN_MARKER,
    Action,
    FolderState,
    claim_run_folder,
    clear_run_folder,
    inspect_run_folder,
)
from alignkit.workflow.sharded_run import (
    RunSharding,
    check_process_layout,
    compute_precision,
    training_sections,
)
from alignkit.workflow.time_breakdown import time_breakdown

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel

__all__ = ["RecipeRun", "RunContext", "RunPlan", "RunSummary", "execute_run"]


@dataclass
class RunContext:
    """What the plan's steps share: where the run lives and runs, its models, and the report being built."""

    run_dir: Path
    device: torch.device
    env: DistEnv
    console: Console
    resume: bool
    tokenizer: Any = None
    policy: PreTrainedModel | None = None
    sharding: RunSharding | None = None  # set when the policy is sharded (distributed.strategy fsdp)
    results: dict[str, StageResult] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> PreTrainedModel:
        """The policy (set once :meth:`RunPlan.load` has run)."""
        assert self.policy is not None, "the policy is loaded first"
        return self.policy


class StageResult(Protocol):
    """What a trainer's ``fit`` returns: anything that can summarise itself for the report."""

    def summary(self) -> StageSummary: ...


@dataclass
class RunSummary:
    """What a run did: its folder, each stage's result (with its full history) and the report written."""

    run_dir: Path
    results: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def stages(self) -> dict[str, StageSummary]:
        return {name: result.summary() for name, result in self.results.items()}


class RunPlan(Protocol):
    """The steps of a run that depend on its kind (preference training, online RL, ...)."""

    name: str
    seed: int
    device: str
    run_dir: Path
    adapter: AdapterConfig
    distributed: DistributedConfig
    precision: str | None  # train.precision: auto, fp32 or bf16; None: online training (no autocast)
    model_dtype: str  # model.dtype: what a run without autocast computes in

    def check_processes(self, world_size: int, device: torch.device) -> None:
        """Refuse, naming the field, a process layout the run cannot use (before anything is written)."""

    def recipe_yaml(self) -> str:
        """The resolved recipe as saved in the run folder."""

    def inspect_folder(self) -> FolderState:
        """What the run folder holds compared with this recipe (see :func:`inspect_run_folder`)."""

    def preflight(self) -> None:
        """Check what the run needs of this machine that recipe validation does not (an API key's variable),
        before anything is written or loaded; raise a ``ValueError`` naming the setting."""

    def load(self, ctx: RunContext) -> tuple[Any, PreTrainedModel]:
        """The tokenizer and the policy, on ``ctx.device``."""

    def prepare(self, ctx: RunContext) -> None:
        """Everything before the adapter is applied (data, prompts, rewards), into ``ctx``/``ctx.report``."""

    def train(self, ctx: RunContext) -> None:
        """Run the stages; put each one's result in ``ctx.results`` (by stage name)."""

    def open_trackers(self) -> list[Tracker]:
        """The experiment trackers the recipe's ``logging:`` turns on, the recipe logged to each once."""

    def evaluate(self, ctx: RunContext) -> dict[str, Any]:
        """Report sections measured after training (main process only)."""


class RecipeRun:
    """What every plan built from a recipe shares: its identity, its saved form and its policy model.

    Args:
        recipe: a recipe with ``name``, ``seed``, ``model``, ``adapter``, ``train.device`` and ``run_dir()``.
        schema: the recipe's model class, which reads a saved recipe back (to compare it with ``recipe``).
        dump: the recipe as saved in the run folder.
    """

    def __init__(self, recipe: Any, schema: type[BaseModel], dump: Callable[[Any], str]) -> None:
        self.recipe = recipe
        self.name: str = recipe.name
        self.seed: int = recipe.seed
        self.device: str = recipe.train.device
        self.run_dir: Path = recipe.run_dir()
        self.adapter: AdapterConfig = recipe.adapter
        self.distributed: DistributedConfig = recipe.distributed
        self.precision: str | None = getattr(recipe.train, "precision", None)  # online training has no autocast
        self.model_dtype: str = recipe.model.dtype
        self._schema, self._dump = schema, dump

    def check_processes(self, world_size: int, device: torch.device) -> None:
        """The mesh covers the processes; every training section's batch splits over them
        (:func:`~alignkit.workflow.sharded_run.check_process_layout`)."""
        check_process_layout(self.distributed, training_sections(self.recipe), world_size, device)

    def recipe_yaml(self) -> str:
        return self._dump(self.recipe)

    def inspect_folder(self) -> FolderState:
        return inspect_run_folder(self.run_dir, self.recipe, self._schema, self._dump)

    def preflight(self) -> None:
        """The data files and local model folders exist (:func:`~alignkit.workflow.inputs.missing_inputs`),
        the evaluation's judge can read its API key (:func:`~alignkit.eval.judges.keys.check_judge_environment`)
        and the packages of the trackers ``logging:`` turns on are installed."""
        if missing := missing_inputs(self.recipe):
            raise RecipeError(f"{self.run_dir}: nothing was changed, the run needs what is not there: "
                              + "; ".join(missing))
        check_judge_environment(self.recipe.eval.judge if self.recipe.eval is not None else None)
        if trackers := missing_tracker_packages(self.recipe.logging):
            raise ValueError("; ".join(f"logging.{field}: {why}" for field, why in trackers))

    def open_trackers(self) -> list[Tracker]:
        """The trackers of ``logging:`` (:func:`~alignkit.train.trackers.open_trackers`), in the run folder,
        named after the run, with the recipe as it is saved in ``recipe.yaml`` as the hyperparameters."""
        return open_trackers(self.recipe.logging, self.run_dir, name=self.name,
                             hparams=self.recipe.model_dump(mode="json"))

    def load_causal_lm(self, device: torch.device) -> PreTrainedModel:
        """The recipe's causal LM on ``device``, its dropout off unless ``model.disable_dropout`` is false."""
        model = load_causal_lm(self.recipe.model, device)
        if self.recipe.model.disable_dropout:
            disable_dropout(model)
        return model


def _decide_folder(plan: RunPlan, ctx: RunContext, *, resume: bool, overwrite: bool) -> Action:
    """Decide what the run folder allows and check what would fail later; nothing is written. Every process
    takes the same decision from the folder as it was before any change."""
    folder = plan.inspect_folder()
    if ctx.env.enabled:
        torch.distributed.barrier()
    action = claim_run_folder(ctx.run_dir, folder, resume=resume, overwrite=overwrite)
    if action == "finished":
        ctx.console.print(f"[cyan]{ctx.run_dir} holds the finished run of this recipe: nothing to resume, "
                          "nothing changed[/]")
        return action
    plan.preflight()  # what would fail after training: checked before the folder is written or a model loaded
    return action


def _claim_folder(plan: RunPlan, ctx: RunContext, action: Action) -> None:
    """(Main process) clear the folder when replacing a run, mark it and save the recipe; once the model has
    loaded, so that a model that does not load leaves the folder as it was."""
    if ctx.env.is_main:
        if action == "replace":
            ctx.console.print(f"[yellow]{ctx.run_dir}: replacing the run it held (--overwrite)[/]")
            clear_run_folder(ctx.run_dir)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(ctx.run_dir / RUN_MARKER, "This folder is an alignkit run (see docs/architecture.md).\n")
        write_atomic(ctx.run_dir / "recipe.yaml", plan.recipe_yaml())
    if ctx.env.enabled:
        torch.distributed.barrier()


def _rebuild_policy(plan: RunPlan, ctx: RunContext) -> PreTrainedModel:
    """The policy as it was before the first stage: loaded again with the run's seed, adapter applied."""
    with rng_preserved():
        seed_everything(plan.seed)
        _, policy = plan.load(ctx)
        if plan.adapter.kind != "none":
            apply_adapter(policy, plan.adapter)
    return policy


def _load(plan: RunPlan, ctx: RunContext) -> None:
    """The tokenizer and the policy into ``ctx``, timed as the run's ``loading`` phase."""
    with phase("loading"):
        ctx.tokenizer, ctx.policy = plan.load(ctx)
    check_vocabulary(ctx.policy, ctx.tokenizer)  # an id past the embedding fails deep in a forward pass


def _run_phases(plan: RunPlan, ctx: RunContext) -> None:
    """Prepare, [shard], train, save and evaluate (the model loaded), each step timed as a phase of the run."""
    env, console = ctx.env, ctx.console
    with phase("data preparation"):
        plan.prepare(ctx)
    if plan.adapter.kind != "none":
        apply_adapter(ctx.model, plan.adapter)
    trainable, total = count_parameters(ctx.model)
    console.print(format_parameter_table(parameter_table(ctx.model)))
    ctx.report["parameters"] = {"trainable": trainable, "total": total}
    if env.enabled and plan.distributed.strategy == "fsdp":
        cfg = compute_precision(plan.distributed, plan.precision or "fp32", ctx.device)
        ctx.sharding = RunSharding(cfg, env, ctx.device, rebuild=partial(_rebuild_policy, plan, ctx))
        ctx.sharding.shard_policy(ctx.model)
    with phase("training"):
        plan.train(ctx)
    if ctx.sharding is not None:  # the main process saves and evaluates an ordinary model, as in one process
        ctx.policy = cast("PreTrainedModel", ctx.sharding.gathered(ctx.model))
    ctx.report["stages"] = {name: result.summary().to_dict() for name, result in ctx.results.items()}
    if env.is_main:
        with phase("saving the model"):
            save_model(ctx.model, ctx.tokenizer, ctx.run_dir / "model",
                       copy_base=getattr(plan.adapter, "save_base", False))
        with phase("evaluation"):
            ctx.report.update(plan.evaluate(ctx))


def execute_run(plan: RunPlan, *, resume: bool = False, overwrite: bool = False,
                console: Console | None = None) -> RunSummary:
    """Run ``plan`` through the one skeleton; write the run folder; return what happened.

    Args:
        resume: continue the interrupted run in the folder (same recipe only); a finished run is left as it is.
        overwrite: replace whatever run the folder holds (it is cleared first).

    Raises:
        RecipeError: before anything is written, when the folder holds another run and neither flag says
            what to do with it (see :func:`~alignkit.workflow.run_folder.claim_run_folder`).
        ValueError: before anything is written or loaded, when the plan's :meth:`~RunPlan.preflight` finds that
            this machine lacks what the run needs later (e.g. the judge's API key variable is not set).
    """
    console = console or Console(stderr=True)
    env = init_distributed(resolve_device(plan.device), timeout_s=plan.distributed.timeout_s)
    ctx = RunContext(run_dir=plan.run_dir, device=resolve_device(plan.device, env), env=env, console=console,
                     resume=resume)
    plan.check_processes(env.world_size, ctx.device)
    with ExitStack() as held:
        if env.is_main:  # one run at a time in a folder; the main process speaks for the others
            held.enter_context(run_folder_lock(ctx.run_dir, console))
        return _execute(plan, ctx, resume=resume, overwrite=overwrite)


def _execute(plan: RunPlan, ctx: RunContext, *, resume: bool, overwrite: bool) -> RunSummary:
    """:func:`execute_run` once the run folder is held."""
    env, console = ctx.env, ctx.console
    action = _decide_folder(plan, ctx, resume=resume, overwrite=overwrite)
    if action == "finished":
        return RunSummary(run_dir=ctx.run_dir, report=read_json(ctx.run_dir / "report.json", what="a run's report"))
    seed_everything(plan.seed)
    precision = (stored_precision(plan.model_dtype) if plan.precision is None  # the trainer and FSDP decide alike
                 else resolve_precision(plan.precision, ctx.device))
    if env.is_main:
        console.print(precision.line())
    ctx.report["precision"] = precision.to_dict()
    ctx.report["world_size"] = env.world_size  # processes that trained it (--nproc / torchrun)
    clock = PhaseClock()
    started = time.perf_counter()
    with recording(clock):
        _load(plan, ctx)
        _claim_folder(plan, ctx, action)
        with tracking(plan.open_trackers() if env.is_main else []):
            _run_phases(plan, ctx)
    ctx.report["wall_seconds"] = time.perf_counter() - started
    if env.is_main:  # after the wall time: a first run on this machine measures its peak throughput here
        ctx.report["time_breakdown"] = time_breakdown(clock, ctx.report["wall_seconds"], ctx.device)
    ctx.report["peak_rss_mib"] = peak_rss_mib()
    if ctx.device.type == "cuda":
        ctx.report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    if env.is_main:
        write_report(ctx.report, ctx.run_dir, console=console)
    return RunSummary(run_dir=ctx.run_dir, results=dict(ctx.results), report=ctx.report)
