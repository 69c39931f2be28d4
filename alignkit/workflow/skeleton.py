"""The one sequence every run follows, offline or online; what differs is a :class:`RunPlan`.

    device and processes -> run folder + recipe.yaml -> seeds -> tokenizer and policy -> plan.prepare
    -> adapter -> plan.train (stages) -> model/ -> plan.evaluate -> report.json, report.md, plots

Only the main process writes files; every process trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn

from alignkit.cache import write_atomic
from alignkit.peft import apply_adapter, count_parameters, format_parameter_table, parameter_table
from alignkit.peft.config import AdapterConfig
from alignkit.report.tables import write_report
from alignkit.train.distributed import DistEnv, init_distributed
from alignkit.train.summary import StageSummary
from alignkit.workflow.environment import peak_rss_mib, resolve_device, seed_everything
from alignkit.workflow.model_io import save_model

__all__ = ["RunContext", "RunPlan", "RunSummary", "execute_run"]


@dataclass
class RunContext:
    """What the plan's steps share: where the run lives and runs, its models, and the report being built."""

    run_dir: Path
    device: torch.device
    env: DistEnv
    console: Console
    resume: bool
    tokenizer: Any = None
    policy: nn.Module | None = None
    results: dict[str, StageResult] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
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

    def recipe_yaml(self) -> str:
        """The resolved recipe as saved in the run folder."""

    def load(self, ctx: RunContext) -> tuple[Any, nn.Module]:
        """The tokenizer and the policy, on ``ctx.device``."""

    def prepare(self, ctx: RunContext) -> None:
        """Everything before the adapter is applied (data, prompts, rewards), into ``ctx``/``ctx.report``."""

    def train(self, ctx: RunContext) -> None:
        """Run the stages; put each one's result in ``ctx.results`` (by stage name)."""

    def evaluate(self, ctx: RunContext) -> dict[str, Any]:
        """Report sections measured after training (main process only)."""


def execute_run(plan: RunPlan, *, resume: bool = False, console: Console | None = None) -> RunSummary:
    """Run ``plan`` through the one skeleton; write the run folder; return what happened."""
    console = console or Console(stderr=True)
    env = init_distributed(resolve_device(plan.device))
    ctx = RunContext(run_dir=plan.run_dir, device=resolve_device(plan.device, env), env=env, console=console,
                     resume=resume)
    if env.is_main:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(ctx.run_dir / "recipe.yaml", plan.recipe_yaml())
    seed_everything(plan.seed)
    started = time.perf_counter()
    ctx.tokenizer, ctx.policy = plan.load(ctx)
    plan.prepare(ctx)
    if plan.adapter.kind != "none":
        apply_adapter(ctx.policy, plan.adapter)
    trainable, total = count_parameters(ctx.policy)
    console.print(format_parameter_table(parameter_table(ctx.policy)))
    ctx.report["parameters"] = {"trainable": trainable, "total": total}
    plan.train(ctx)
    ctx.report["stages"] = {name: result.summary().to_dict() for name, result in ctx.results.items()}
    if env.is_main:
        save_model(ctx.policy, ctx.tokenizer, ctx.run_dir / "model")
        ctx.report.update(plan.evaluate(ctx))
    ctx.report["wall_seconds"] = time.perf_counter() - started
    ctx.report["peak_rss_mib"] = peak_rss_mib()
    if ctx.device.type == "cuda":
        ctx.report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    if env.is_main:
        write_report(ctx.report, ctx.run_dir, console=console)
    return RunSummary(run_dir=ctx.run_dir, results=dict(ctx.results), report=ctx.report)
