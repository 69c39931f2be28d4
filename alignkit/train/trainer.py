"""The offline trainer, shared by every objective and stage (SFT, preference, reward model).

It brings its optimizer step to the fit loop both trainers share (:class:`~alignkit.train.loop.FitLoop`:
resume, logging, evaluation, early stopping, checkpoints). Per optimizer step: the step's examples are fixed by (seed, epoch, position) alone, split over processes
and micro-batches; each micro-batch's loss is ``sum(weight * loss) / total weight of the whole step``, so
gradient accumulation and data parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from alignkit.data.types import TokenizedPair
from alignkit.losses import LossOutput, Objective, PreferenceStats
from alignkit.models.flops import forward_flops, matmul_parameters, training_flops
from alignkit.models.logps import DEFAULT_LOGPS, LogpsOptions
from alignkit.models.precision import autocast_context, resolve_precision
from alignkit.models.reference import Reference
from alignkit.timing import count_flops, phase, timed
from alignkit.train.config import OptimizerConfig, SFTConfig, TrainConfig
from alignkit.train.distributed import (
    DistEnv,
    all_reduce_flags,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_parameters,
)
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.forward import objective_step
from alignkit.train.loop import CurveEvaluation, Evaluation, FitLoop, LoopState, optimizer_step
from alignkit.train.metrics import MetricSums, batch_metrics, step_metrics
from alignkit.train.schedule import make_scheduler
from alignkit.train.sharding import is_sharded, set_gradient_sync
from alignkit.train.summary import StageSummary, steps_per_second

__all__ = ["TrainResult", "Trainer", "divergence_hint", "make_optimizer", "step_order"]

Collate = Callable[[list[TokenizedPair]], dict[str, Any]]

PROGRESS_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "tokens_per_second")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did; :meth:`summary` is what the report keeps."""

    steps: int
    stopped_early: bool
    final_metrics: dict[str, float]
    best_metric: float | None
    best_step: int | None
    eval_history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    resumed_at: int = 0  # steps already done when this process started (wall_seconds covers the rest)

    @property
    def steps_per_second(self) -> float | None:
        return steps_per_second(self.steps, self.resumed_at, self.wall_seconds)

    def summary(self) -> StageSummary:
        """The stage as the report keeps it."""
        history = self.eval_history
        return StageSummary(
            steps=self.steps, wall_seconds=self.wall_seconds, steps_per_second=self.steps_per_second,
            last_train_metrics={k: v for k, v in self.final_metrics.items() if not k.startswith("eval/")},
            stopped_early=self.stopped_early, best_step=self.best_step,
            eval_before=history[0] if history and history[0]["step"] == 0 else None,
            eval_after=history[-1] if history else None,
        )


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (default) or RMSprop, as ``cfg`` (optimizer, lr, betas, weight_decay) says."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The fused kernel updates each tensor in one pass with no temporaries (foreach AdamW allocates
    # copies as large as all the parameters at each step); it needs floating-point tensors on CPU or CUDA.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             fused=fused, foreach=None if fused else True)


def divergence_hint(section: str, cfg: OptimizerConfig) -> str:
    """What to change when a stage with optimizer settings ``cfg`` (recipe section ``section``) diverges."""
    clip = "" if getattr(cfg, "max_grad_norm", None) else f", or set {section}.max_grad_norm to clip gradients"
    return f"Lower {section}.lr (now {cfg.lr:g}){clip}, and start the run again."


def step_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation that depends on (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    """Train ``model`` on ``objective`` over ``train_pairs``.

    Args:
        model: the policy (or reward model); its trainable parameters are those with requires_grad.
        objective: what to minimise (see :func:`alignkit.losses.build_objective`).
        cfg: optimisation settings of this stage.
        train_pairs / eval_pairs: tokenized examples.
        collate: turns a list of examples into a batch for the model.
        run_dir: the stage folder (metrics.jsonl, checkpoints/).
        reference: source of reference log-probs, when the objective needs one.
        seed: data order and RNG seed.
        stage: a name written into every metrics record ("sft", "preference").
        device: where batches go; default: the model's.
        env: the data-parallel environment.
        logps: chunk size and packing of the log-prob forwards (``recipe.model.logps``).
        console: where progress and messages go.
        curve: reward and KL evaluated along training (``eval.every``), logged to ``metrics.jsonl``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        cfg: TrainConfig,
        *,
        train_pairs: Sequence[TokenizedPair],
        eval_pairs: Sequence[TokenizedPair] = (),
        collate: Collate,
        run_dir: Path,
        reference: Reference | None = None,
        seed: int = 0,
        stage: str = "train",
        device: torch.device | None = None,
        env: DistEnv | None = None,
        logps: LogpsOptions = DEFAULT_LOGPS,
        console: Console | None = None,
        curve: CurveEvaluation | None = None,
    ) -> None:
        self.model = model
        self.curve = curve
        self.objective = objective
        self.cfg = cfg
        self.train_pairs = list(train_pairs)
        self.eval_pairs = list(eval_pairs)[: cfg.max_eval_examples] if cfg.max_eval_examples else list(eval_pairs)
        self.collate = collate
        self.run_dir = Path(run_dir)
        self.reference = reference
        self.seed = seed
        self.stage = stage
        self.env = env or DistEnv()
        self.device = device or next(model.parameters()).device
        self.logps = logps
        self.console = console or Console(stderr=True)
        self.guard = DivergenceGuard(stage, divergence_hint("sft" if isinstance(cfg, SFTConfig) else "train", cfg))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        if self.eval_pairs and len(self.eval_pairs) < self.env.world_size:
            # Each process evaluates its own share (eval_pairs[rank::world_size]); one with none would
            # all-reduce a tensor of another shape than the rest and hang or crash. Every process sees
            # the same pairs, so all of them refuse together.
            section = "sft" if isinstance(cfg, SFTConfig) else "train"
            raise ValueError(
                f"{stage}: {len(self.eval_pairs)} held-out examples are fewer than the {self.env.world_size} "
                f"processes, each of which evaluates a share; raise {section}.max_eval_examples or "
                "data.test_size, or start fewer processes"
            )
        self.sharded = is_sharded(model)
        if not self.sharded:  # a sharded model was broadcast before it was sharded (shard_model)
            broadcast_parameters(self.params, self.env)
        if len(self.train_pairs) < cfg.batch_size:
            raise ValueError(
                f"{stage}: {len(self.train_pairs)} training examples are fewer than one batch "
                f"(train.batch_size={cfg.batch_size})"
            )
        if cfg.batch_size % (cfg.grad_accum * self.env.world_size):
            raise ValueError(
                f"{stage}: batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum} x "
                f"{self.env.world_size} processes"
            )
        self.steps_per_epoch = len(self.train_pairs) // cfg.batch_size
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps=cfg.warmup_steps,
                                        total_steps=self.total_steps, schedule=cfg.schedule)
        # Running values of stateful losses (BCO's δ): read by every batch, updated after each step's batches.
        self.loss_state = objective.new_state()
        self.autocast_dtype = self._autocast_dtype()
        self._matmul_parameters = matmul_parameters(model)
        self._flops_per_token = training_flops(self._matmul_parameters, sum(p.numel() for p in self.params), 1)
        self._compute_dtype = str(self.autocast_dtype or self.params[0].dtype).removeprefix("torch.")

    # -----------------------------------------------------------------------------------------------------
    def _autocast_dtype(self) -> torch.dtype | None:
        """bf16 autocast when asked for, or when auto and bf16 training measured faster on this device (one
        rule for every run: :func:`~alignkit.models.precision.choose_precision`)."""
        return resolve_precision(self.cfg.precision, self.device).autocast_dtype

    def _autocast(self) -> torch.autocast:
        return autocast_context(self.device.type, self.autocast_dtype)

    def _step_examples(self, step: int) -> list[TokenizedPair]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = step_order(len(self.train_pairs), self.seed, epoch)
        b = self.cfg.batch_size
        return [self.train_pairs[i] for i in order[position * b:(position + 1) * b]]

    def _micro_batches(self, examples: list[TokenizedPair]) -> list[list[TokenizedPair]]:
        local = examples[self.env.rank::self.env.world_size]
        size = len(local) // self.cfg.grad_accum
        return [local[i * size:(i + 1) * size] for i in range(self.cfg.grad_accum)]

    # -----------------------------------------------------------------------------------------------------
    def _accumulate(self, sums: MetricSums, out: LossOutput, stats: PreferenceStats, weights: torch.Tensor) -> None:
        """Add one batch's weighted ``loss`` and its :func:`~alignkit.train.metrics.batch_metrics`."""
        sums.add_total("loss", float((out.losses.detach() * weights).sum()), float(weights.sum()))
        for name, values in batch_metrics(out, stats).items():
            sums.add(name, values)

    def accumulate_gradients(self, step: int) -> tuple[MetricSums, int, int]:
        """Forward and backward over every micro-batch of optimizer step ``step``; gradients add up in .grad.

        In one process a non-finite loss raises :class:`~alignkit.train.divergence.TrainingDivergedError`
        before its backward. Under data parallelism it is counted instead and the step goes on, so that this
        process still reaches the gradient all-reduce where every process learns of it (:meth:`train_step`).

        Returns:
            The step's metric sums, its number of non-padding tokens on this process, and the number of its
            micro-batches on this process whose loss was not finite (0 in one process).
        """
        self.model.train()
        examples = self._step_examples(step)
        total_weight = sum(e.weight for e in examples)  # global: every process sees the whole step
        if total_weight <= 0:
            raise ValueError(f"{self.stage}: the examples of step {step + 1} all have weight 0")
        sums = MetricSums()
        tokens = non_finite = 0
        micro_batches = self._micro_batches(examples)
        state_totals = []
        for i, micro in enumerate(micro_batches):
            set_gradient_sync(self.model, i == len(micro_batches) - 1)
            batch = _to_device(self.collate(micro), self.device)
            tokens += int(batch["attention_mask"].sum())
            with self._autocast():
                out, stats = objective_step(self.model, batch, self.objective, self.reference, logps=self.logps,
                                            state=self.loss_state, pool=self.env)
            if self.loss_state is not None:
                state_totals.append(self.loss_state.totals(stats))
            weights = batch["weights"].to(out.losses.dtype)
            loss = (out.losses * weights).sum() / total_weight
            if self.env.enabled:
                non_finite += not math.isfinite(float(loss.detach()))
            else:
                self.guard.check("loss", loss, step + 1, before="backward")
            loss.backward()
            self._accumulate(sums, out, stats, weights)
        if self.loss_state is not None:  # summed over processes: every process keeps the same values
            self.loss_state.update(all_reduce_sum(torch.stack(state_totals).sum(0).double(), self.env))
        return sums, tokens, non_finite

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (all micro-batches); returns this step's metrics.

        Raises:
            TrainingDivergedError: on every process alike, when the loss of any process's micro-batch or
                the gradient norm is not finite; the weights stay as they were.
        """
        start = time.perf_counter()
        with phase("forward/backward"):
            sums, tokens, non_finite = self.accumulate_gradients(step)
            count_flops(self._flops_per_token * tokens, self._compute_dtype)
        # One all-reduce carries the gradients and whether any process saw a non-finite loss; a sharded
        # model's gradients were reduce-scattered in the last backward already.
        flags = (float(non_finite > 0),)
        (processes_non_finite,) = (all_reduce_flags(flags, self.env) if self.sharded
                                   else all_reduce_gradients(self.params, self.env, extra=flags))
        self.guard.check_processes("loss", processes_non_finite, self.env.world_size, step + 1,
                                   before="the optimizer step")
        with phase("optimizer"):
            grad_norm, lr = optimizer_step(self.params, self.optimizer, self.scheduler,
                                           max_grad_norm=self.cfg.max_grad_norm, guard=self.guard, step=step + 1)
        sums.add_total("tokens", float(tokens), 1.0)
        metrics = sums.means(self.env)
        elapsed = time.perf_counter() - start
        tokens_per_second = metrics.pop("tokens") * self.env.world_size / max(elapsed, 1e-9)
        metrics.update(step_metrics(tokens_per_second=tokens_per_second, grad_norm=grad_norm, learning_rate=lr,
                                    step_seconds=elapsed))
        return metrics

    @timed("held-out loss")
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over the held-out pairs, prefixed ``eval/``."""
        if not self.eval_pairs:
            return {}
        self.model.eval()
        size = self.cfg.eval_batch_size or max(1, self.cfg.batch_size // self.cfg.grad_accum)
        # Like a training step: each batch of `size` examples is split over the processes, and a loss's
        # batch-level samples (KTO's mismatched pairs) are pooled, so its statistic (z0) is the whole batch's
        # on any number of processes. Every process runs one forward per batch (sharded weights are gathered
        # by all, and pooling is a collective); one whose share of a batch is empty runs a copy and discards it.
        sums = MetricSums()
        for start in range(0, len(self.eval_pairs), size):
            whole = self.eval_pairs[start:start + size]
            part = whole[self.env.rank::self.env.world_size]
            batch = _to_device(self.collate(part or whole[:1]), self.device)
            with self._autocast():
                out, stats = objective_step(self.model, batch, self.objective, self.reference, logps=self.logps,
                                            state=self.loss_state, pool=self.env)
            if part:
                self._accumulate(sums, out, stats, batch["weights"].to(out.losses.dtype))
                # The policy's forward; a live reference's is left out, as in training (a floor).
                count_flops(forward_flops(self._matmul_parameters, int(batch["attention_mask"].sum())),
                            self._compute_dtype)
        metrics = sums.means(self.env)
        return {f"eval/{k}": v for k, v in metrics.items()}

    # -----------------------------------------------------------------------------------------------------
    def _fit_step(self, step: int, state: LoopState) -> dict[str, float]:
        """One step of :meth:`fit`; the loss's running values go into the state each checkpoint keeps."""
        metrics = self.train_step(step)
        if self.loss_state is not None:
            state.extra["loss_state"] = self.loss_state.to_json()
        return metrics

    def _resume_loss_state(self, folder: Path, state: LoopState) -> None:
        if self.loss_state is not None and "loss_state" in state.extra:
            self.loss_state.load_json(state.extra["loss_state"])

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train to ``total_steps`` (or an early stop), logging to ``run_dir`` (see :class:`FitLoop`).

        Args:
            resume: continue from ``run_dir/checkpoints`` when it holds a checkpoint.

        Raises:
            TrainingDivergedError: a non-finite loss, gradient norm or weights; nothing non-finite is saved.
        """
        cfg = self.cfg
        evaluation = Evaluation(self.evaluate, cfg.eval_every, cfg.early_stopping) if self.eval_pairs else None
        loop = FitLoop(self.stage, self.run_dir, self.total_steps, self.model, self.optimizer, self.scheduler,
                       self.guard, log_every=cfg.log_every, save_every=cfg.save_every,
                       keep_checkpoints=cfg.keep_checkpoints, evaluation=evaluation, curve=self.curve,
                       progress_keys=PROGRESS_KEYS,
                       on_resume=self._resume_loss_state, env=self.env, console=self.console)
        out = loop.run(self._fit_step, resume=resume)
        state = out.state
        eval_metrics = state.eval_history[-1] if state.eval_history else {}
        return TrainResult(
            steps=state.step, stopped_early=state.stopped_early,
            final_metrics={**out.last_metrics, **eval_metrics}, best_metric=state.best_metric,
            best_step=state.best_step, eval_history=state.eval_history, wall_seconds=out.wall_seconds,
            resumed_at=out.resumed_at,
        )
