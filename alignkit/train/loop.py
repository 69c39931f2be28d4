"""The fit loop both trainers run; each trainer brings only its own optimizer step.

    clear killed saves -> [resume from the latest checkpoint] -> [evaluate at step 0] -> for each step:
        metrics = step_fn(step, state) -> log -> progress -> [evaluate: best checkpoint, early stop]
        -> [save a checkpoint, prune old ones]

The preference :class:`~alignkit.train.trainer.Trainer` steps over micro-batches of an objective, the
:class:`~alignkit.online.trainer.OnlineTrainer` samples, rewards and updates (RLOO: one optimizer step; PPO,
GRPO: several); both end every optimizer step with :func:`optimizer_step`. Resume, logging, evaluation, early stopping and checkpoints live here
once, and so do the checks that keep non-finite weights out of every checkpoint
(:mod:`alignkit.train.divergence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from alignkit.jsonio import RunFileError
from alignkit.train.checkpoint import (
    STATE,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_unfinished_saves,
    save_checkpoint,
)
from alignkit.train.config import EarlyStoppingConfig
from alignkit.train.distributed import DistEnv, full_value
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.metrics import MetricsWriter
from alignkit.train.sharding import gather_optimizer_state, gather_trainable_state, is_sharded

__all__ = ["CurveEvaluation", "Evaluation", "FitLoop", "LoopOutcome", "LoopState", "StepFn", "optimizer_step"]


@dataclass
class LoopState:
    """What a checkpoint keeps of the loop (``trainer_state.json``); ``extra`` is the trainer's own.

    Attributes:
        step: optimizer steps done.
        best_metric, best_step: the best held-out value of the tracked metric so far, and its step.
        bad_evals: evaluations in a row without improvement.
        eval_history: every evaluation's metrics, with its ``step``.
        stopped_early: early stopping ended the stage.
        extra: trainer-specific values, saved at the top level of the JSON (online: ``beta``, ``history``).
    """

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    eval_history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The flat dict a checkpoint stores."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        """Read back :meth:`to_json` (keys a state lacks take their defaults; unknown keys go to ``extra``).

        Raises:
            ValueError: a value of the wrong type (the file was not written by :meth:`to_json`).
        """
        names = {f.name for f in fields(cls)} - {"extra"}
        state = cls(**{k: v for k, v in data.items() if k in names},
                    extra={k: v for k, v in data.items() if k not in names})
        whole = (state.step, state.bad_evals, *(() if state.best_step is None else (state.best_step,)))
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in whole):
            raise ValueError("step, bad_evals and best_step must be non-negative integers")
        if state.best_metric is not None and not isinstance(state.best_metric, (int, float)):
            raise ValueError(f"best_metric must be a number, got {type(state.best_metric).__name__}")
        if not isinstance(state.eval_history, list) or not all(isinstance(e, dict) for e in state.eval_history):
            raise ValueError("eval_history must be a list of objects")
        if not isinstance(state.stopped_early, bool):
            raise ValueError("stopped_early must be true or false")
        return state


StepFn = Callable[[int, LoopState], dict[str, float]]
"""``step_fn(step, state) -> metrics``: run optimizer step ``step`` (0-based); may update ``state.extra``."""


@dataclass(frozen=True)
class Evaluation:
    """Held-out evaluation of an offline stage.

    Attributes:
        evaluate: returns the held-out metrics, ``eval/``-prefixed.
        every: evaluate every N steps (and at step 0); None evaluates only at the end.
        early_stopping: stop when its metric stops improving; without it ``eval/loss`` (lower is better)
            still picks the ``best`` checkpoint.
    """

    evaluate: Callable[[], dict[str, float]]
    every: int | None
    early_stopping: EarlyStoppingConfig | None = None


@dataclass
class CurveEvaluation:
    """An evaluation along training (reward and KL of the policy so far), logged to ``metrics.jsonl``.

    Attributes:
        evaluate: returns flat metrics (``curve/``-prefixed); it must leave the training's random state as
            it found it, so that a run with a curve trains exactly as one without.
        every: evaluate after every N steps, except the last (the run's own final evaluation is that point).
    """

    evaluate: Callable[[], dict[str, float]]
    every: int


@dataclass
class LoopOutcome:
    """What :meth:`FitLoop.run` did.

    Attributes:
        state: the final loop state (resumed state included).
        last_metrics: the last step's metrics; {} when no step ran (a finished run reloaded).
        wall_seconds: seconds this call spent (not the steps done before a resume).
        resumed_at: steps already done when this call started.
    """

    state: LoopState
    last_metrics: dict[str, float]
    wall_seconds: float
    resumed_at: int


def optimizer_step(
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    max_grad_norm: float | None,
    guard: DivergenceGuard,
    step: int,
) -> tuple[float, float]:
    """Clip the gradients, check their norm, step the optimizer and the schedule, clear the gradients.

    A non-finite gradient norm raises before the optimizer step (see :mod:`alignkit.train.divergence`), so
    the weights stay as they were.

    Args:
        params: the trainable parameters, gradients accumulated (and already all-reduced).
        max_grad_norm: clip the global norm to this; None measures without clipping.
        step: the 1-based step, for the error message.

    Returns:
        The gradient norm before clipping, and the learning rate this step used.
    """
    # Sharded gradients give the norm over every shard (a DTensor): the same number on every process.
    grad_norm = full_value(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
    guard.check("grad_norm", grad_norm, step, before="the optimizer step")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


@dataclass
class FitLoop:
    """Resume, log, evaluate, save: the skeleton around a trainer's step (see the module docstring).

    Attributes:
        stage: written into every metrics record and message.
        run_dir: the stage folder: ``metrics.jsonl``, ``checkpoints/`` (``step-N``, ``latest``, ``best``).
        total_steps: steps to reach.
        model, optimizer, scheduler: what a checkpoint saves and a resume restores.
        guard: raises on non-finite values; the weights are checked before every save.
        log_every: write the step's metrics every N steps (and at the last).
        save_every: write a checkpoint every N steps; always at the last step and on early stopping.
        keep_checkpoints: ``step-*`` checkpoints kept (``best`` is kept besides).
        evaluation: held-out evaluation, best checkpoint and early stopping; None for none.
        curve: evaluation along training (reward and KL); None for none.
        progress_keys: metrics shown in the progress bar and in the plain progress lines.
        checkpoint_files: extra tensors each checkpoint keeps, by file name (the online anchor).
        on_resume: called with the checkpoint folder and its state after a resume loaded them.
        env: the data-parallel environment; only its main process writes files.
        console: where progress and messages go.
    """

    stage: str
    run_dir: Path
    total_steps: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    guard: DivergenceGuard
    log_every: int = 1
    save_every: int | None = None
    keep_checkpoints: int = 1
    evaluation: Evaluation | None = None
    curve: CurveEvaluation | None = None
    progress_keys: tuple[str, ...] = ()
    checkpoint_files: Callable[[], dict[str, dict[str, torch.Tensor]]] | None = None
    on_resume: Callable[[Path, LoopState], None] | None = None
    env: DistEnv = field(default_factory=DistEnv)
    console: Console = field(default_factory=lambda: Console(stderr=True))

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def run(self, step_fn: StepFn, *, state: LoopState | None = None, resume: bool = False) -> LoopOutcome:
        """Step from ``state`` (or the latest checkpoint, with ``resume``) to ``total_steps``.

        Args:
            step_fn: the trainer's step.
            state: the starting state (a fresh :class:`LoopState` by default); replaced by the checkpoint's
                on resume.
            resume: continue from ``checkpoints/`` when it holds a checkpoint.

        Raises:
            TrainingDivergedError: a non-finite loss, gradient norm, held-out metric or weights; the
                checkpoints on disk are those before it.
        """
        state = state or LoopState()
        if self.env.is_main:
            remove_unfinished_saves(self.checkpoints)
        if self.env.enabled:  # the others look for the latest checkpoint only once the clean-up is done
            torch.distributed.barrier()
        ckpt = latest_checkpoint(self.checkpoints) if resume else None
        if ckpt is not None:
            data = load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
            try:  # a trainer state of the wrong types is a bad file, named, not a TypeError halfway through
                state = LoopState.from_json(data)
                if self.on_resume is not None:
                    self.on_resume(ckpt, state)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError) as err:
                raise RunFileError(f"{ckpt / STATE}: not a trainer state alignkit wrote ({type(err).__name__}: "
                                   f"{str(err)[:200]})") from None
            self.console.print(f"[cyan]{self.stage}: resumed from {ckpt} (step {state.step})[/]")
        writer = MetricsWriter(self.run_dir / "metrics.jsonl", enabled=self.env.is_main,
                               resume_from_step=state.step if ckpt is not None else None)
        started, resumed_at = time.perf_counter(), state.step
        metrics: dict[str, float] = {}
        if state.step == 0 and self.evaluation is not None and self.evaluation.every:
            self._evaluate(state, writer)
        with self._progress() as progress:
            task = progress.add_task(self.stage, total=self.total_steps, completed=state.step, metrics="")
            while state.step < self.total_steps and not state.stopped_early:
                metrics = step_fn(state.step, state)
                state.step += 1
                self._after_step(state, metrics, writer, progress, task)
        return LoopOutcome(state=state, last_metrics=metrics, wall_seconds=time.perf_counter() - started,
                           resumed_at=resumed_at)

    # -----------------------------------------------------------------------------------------------------
    def _after_step(self, state: LoopState, metrics: dict[str, float], writer: MetricsWriter,
                    progress: Progress, task: TaskID) -> None:
        step, last = state.step, state.step == self.total_steps
        if step % self.log_every == 0 or last:
            writer.write({"stage": self.stage, "step": step, **metrics})
        short = self._short(metrics)
        progress.update(task, advance=1, metrics=short)
        if not self.console.is_terminal and self.env.is_main and (
            step % max(1, self.total_steps // 10) == 0 or step == 1
        ):  # logs and CI: a plain line every tenth of the run
            self.console.print(f"{self.stage} {step}/{self.total_steps}  {short}")
        ev = self.evaluation
        if ev is not None and ((ev.every and step % ev.every == 0) or last):
            self._evaluate(state, writer)
        if self.curve is not None and step % self.curve.every == 0 and not last and not state.stopped_early:
            self._curve_point(step, writer)
        if (self.save_every and step % self.save_every == 0) or last or state.stopped_early:
            self._save(state)

    def _curve_point(self, step: int, writer: MetricsWriter) -> None:
        assert self.curve is not None
        metrics = self.curve.evaluate()
        for key, number in metrics.items():
            self.guard.check(key, number, step, before="it was logged")
        writer.write({"stage": self.stage, "step": step, **metrics})

    def _evaluate(self, state: LoopState, writer: MetricsWriter) -> None:
        """Evaluate; after step 0, keep the ``best`` checkpoint and decide on early stopping."""
        assert self.evaluation is not None
        step = state.step
        self.guard.check_weights(self.model, step, self.env)  # the cause, rather than the NaN metrics it would give
        metrics = self.evaluation.evaluate()
        for key, number in metrics.items():  # checked before anything is logged: no NaN in metrics.jsonl
            self.guard.check(key, number, step, before="it was logged or the best checkpoint chosen")
        state.eval_history.append({"step": step, **metrics})
        writer.write({"stage": self.stage, "step": step, **metrics})
        if step == 0:
            return
        es = self.evaluation.early_stopping
        name = es.metric if es else "eval/loss"
        if name not in metrics:
            raise KeyError(f"early_stopping.metric {name!r} is not logged; eval metrics: {sorted(metrics)}")
        value = metrics[name]
        best, delta = state.best_metric, es.min_delta if es else 0.0
        mode = es.mode if es else "min"
        if best is None or (value < best - delta if mode == "min" else value > best + delta):
            state.best_metric, state.best_step, state.bad_evals = value, step, 0
            weights = gather_trainable_state(self.model) if is_sharded(self.model) else None
            if self.env.is_main:
                save_checkpoint(self.checkpoints / "best", model=self.model, optimizer=None, scheduler=None,
                                state=state.to_json(), pointer=None, weights=weights)
            return
        state.bad_evals += 1
        if es and state.bad_evals >= es.patience:
            state.stopped_early = True
            self.console.print(f"[yellow]{self.stage}: early stop at step {step}: {name} has not improved "
                               f"for {es.patience} evaluations (best {best:.4f} at step {state.best_step})[/]")

    def _save(self, state: LoopState) -> None:
        self.guard.check_weights(self.model, state.step, self.env)
        weights = optimizer_state = None
        if is_sharded(self.model):  # every process sends its shards; the main process writes full tensors
            weights = gather_trainable_state(self.model)
            optimizer_state = gather_optimizer_state(self.model, self.optimizer)
        if not self.env.is_main:
            return
        files = self.checkpoint_files() if self.checkpoint_files is not None else None
        save_checkpoint(self.checkpoints / f"step-{state.step:07d}", model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, state=state.to_json(), files=files, weights=weights,
                        optimizer_state=optimizer_state)
        prune_checkpoints(self.checkpoints, self.keep_checkpoints)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
            console=self.console, disable=not self.env.is_main or not self.console.is_terminal,
        )  # off a terminal the plain lines of _after_step say the same without redraws

    def _short(self, metrics: dict[str, float]) -> str:
        return "  ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in self.progress_keys if k in metrics)
