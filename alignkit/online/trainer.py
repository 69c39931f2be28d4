"""The online loop: sample k completions per prompt, reward them, penalise KL to the anchor, one RLOO update.

One optimizer step per batch of rollouts (on-policy: the samples always come from the current weights).
The step is this module's; resume, logging, checkpoints (the anchor included) and the non-finite guards are
the fit loop the preference trainer runs too (:class:`~alignkit.train.loop.FitLoop`). Data order reuses
the preference trainer's :func:`~alignkit.train.trainer.step_order` (a permutation of the prompts fixed by
(seed, epoch)), the schedule its :func:`~alignkit.train.schedule.make_scheduler`; KL and log-probs use
:mod:`alignkit.eval.kl`, so the KL logged during training is the estimator the evaluation reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from alignkit.eval.kl import ReferenceFn, completion_batch, completion_logps
from alignkit.models.generate import Completion, eos_token_ids, eval_mode, generate_completions
from alignkit.models.logps import DEFAULT_LOGPS, LogpsOptions, sequence_logps
from alignkit.online.anchor import FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.kl_control import KLController
from alignkit.online.rloo import (
    distinct_n,
    leave_one_out_advantages,
    penalised_rewards,
    policy_gradient_loss,
    sequence_kl_estimate,
)
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.loop import FitLoop, LoopState, optimizer_step
from alignkit.train.schedule import make_scheduler
from alignkit.train.summary import StageSummary, steps_per_second
from alignkit.train.trainer import divergence_hint, make_optimizer, step_order

__all__ = ["OnlineResult", "OnlineTrainer", "Rollout", "ScoreFn"]

ANCHOR_FILE = "anchor.safetensors"

# score(prompts, completions) -> one reward per completion; prompts[i] is completion i's prompt.
ScoreFn = Callable[[list[str], list[str]], list[float]]

PROGRESS_KEYS = ("reward", "kl", "entropy", "length", "beta")


@dataclass
class Rollout:
    """One step's samples: P prompts x k completions, prompt-major, and their rewards (P * k,)."""

    prompts: list[str]
    completions: list[Completion]
    rewards: torch.Tensor


@dataclass
class OnlineResult:
    """What :meth:`OnlineTrainer.fit` did; :meth:`summary` is what the report keeps."""

    steps: int
    final_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    resumed_at: int = 0  # steps already done when this process started (wall_seconds covers the rest)

    def summary(self) -> StageSummary:
        """The stage as the report keeps it."""
        first = self.history[0] if self.history else {}
        return StageSummary(
            steps=self.steps, wall_seconds=self.wall_seconds,
            steps_per_second=steps_per_second(self.steps, self.resumed_at, self.wall_seconds),
            first_train_metrics={k: v for k, v in first.items() if k != "step"},
            last_train_metrics=self.final_metrics,
        )


class OnlineTrainer:
    """RLOO on ``policy`` over ``prompts``.

    Args:
        policy: the model; its trainable parameters are those with requires_grad.
        tokenizer: its tokenizer.
        score: the reward, ``score(prompts, texts) -> rewards``.
        cfg: the online objective (k, sampling, beta, KL control).
        train_cfg: optimisation.
        prompts: training prompts.
        anchor: the KL anchor (:class:`~alignkit.online.anchor.FrozenAnchor` or ``EMAAnchor``).
        controller: beta, fixed or adaptive.
        run_dir: the stage folder (``metrics.jsonl``, ``checkpoints/``).
        initial: the initial model for the logged ``kl``; None when the anchor *is* the initial model.
        seed: prompt order and sampling seed.
        stage: written into every metrics record.
        logps: chunk size and packing of the log-prob forwards (``recipe.model.logps``).
        console: where progress and messages go.
    """

    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        score: ScoreFn,
        cfg: OnlineConfig,
        train_cfg: OnlineTrainConfig,
        *,
        prompts: Sequence[str],
        anchor: FrozenAnchor,
        controller: KLController,
        run_dir: Path,
        initial: ReferenceFn | None = None,
        seed: int = 0,
        stage: str = "online",
        logps: LogpsOptions = DEFAULT_LOGPS,
        console: Console | None = None,
    ) -> None:
        self.policy, self.tokenizer, self.score = policy, tokenizer, score
        self.cfg, self.train_cfg = cfg, train_cfg
        self.prompts = list(prompts)
        self.anchor, self.controller, self.initial = anchor, controller, initial
        self.run_dir, self.seed, self.stage, self.logps = Path(run_dir), seed, stage, logps
        self.console = console or Console(stderr=True)
        self.guard = DivergenceGuard(stage, divergence_hint("train", train_cfg))
        if len(self.prompts) < train_cfg.prompts_per_step:
            raise ValueError(f"{stage}: {len(self.prompts)} training prompts are fewer than one step "
                             f"(train.prompts_per_step={train_cfg.prompts_per_step})")
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the policy has no trainable parameters")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(policy, tokenizer)[0]
        self.device = next(policy.parameters()).device
        self.steps_per_epoch = len(self.prompts) // train_cfg.prompts_per_step
        self.optimizer = make_optimizer(self.params, train_cfg)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps=train_cfg.warmup_steps,
                                        total_steps=train_cfg.max_steps, schedule=train_cfg.schedule)

    # -----------------------------------------------------------------------------------------------------
    def step_prompts(self, step: int) -> list[str]:
        """The prompts of update ``step``: a slice of a (seed, epoch)-fixed permutation."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = step_order(len(self.prompts), self.seed, epoch)
        b = self.train_cfg.prompts_per_step
        return [self.prompts[i] for i in order[position * b:(position + 1) * b]]

    def rollout(self, step: int) -> Rollout:
        """Sample k completions for each of the step's prompts from the current policy and reward them."""
        prompts = self.step_prompts(step)
        sampling = self.cfg.sampling.but(seed=(self.seed * 1_000_003 + step) * 1009)  # disjoint across steps
        completions = generate_completions(self.policy, self.tokenizer, prompts, sampling)
        texts = [c.text for c in completions]
        rewards = self.score([prompts[c.prompt_index] for c in completions], texts)
        if len(rewards) != len(completions):
            raise ValueError(f"the reward returned {len(rewards)} values for {len(completions)} completions")
        return Rollout(prompts, completions, torch.tensor(rewards, dtype=torch.float32))

    def _logps(self, model: nn.Module, completions: list[Completion]) -> torch.Tensor:
        size = self.cfg.update_batch_size or len(completions)
        return completion_logps(model, completions, batch_size=size, pad_token_id=self.pad_id, logps=self.logps)

    def train_step(self, step: int) -> dict[str, float]:
        """One rollout and one optimizer step; returns the step's metrics."""
        start = time.perf_counter()
        roll = self.rollout(step)
        comps, n, k = roll.completions, len(roll.completions), self.cfg.samples_per_prompt
        self.guard.check("reward", roll.rewards.sum(), step + 1, before="the update",
                         hint="The reward function must return finite numbers.")
        policy_logps = self._logps(self.policy, comps)  # (N,) no grad, the weights that sampled
        with self.anchor.model_context() as anchored:
            anchor_logps = self._logps(anchored, comps)
        kl_anchor = sequence_kl_estimate(policy_logps, anchor_logps)  # (N,)
        if self.initial is None:
            kl_initial = kl_anchor
        else:
            with self.initial() as initial_model:
                kl_initial = sequence_kl_estimate(policy_logps, self._logps(initial_model, comps))
        beta = self.controller.beta
        penalised = penalised_rewards(roll.rewards, kl_anchor, beta)
        by_prompt = rearrange(penalised, "(p k) -> p k", k=k)  # the k samples of each prompt side by side
        advantages = rearrange(leave_one_out_advantages(by_prompt), "p k -> (p k)")  # (N,)

        loss_total = self._accumulate_policy_gradient(comps, advantages, step)
        grad_norm, lr = optimizer_step(self.params, self.optimizer, self.scheduler,
                                       max_grad_norm=self.train_cfg.max_grad_norm, guard=self.guard, step=step + 1)
        self.anchor.update()
        self.controller.update(float(kl_anchor.mean()))

        lengths = torch.tensor([c.num_tokens for c in comps], dtype=torch.float32)
        ids = [c.completion_ids for c in comps]
        return {
            "reward": float(roll.rewards.mean()),
            "kl": float(kl_initial.mean()),
            "kl_anchor": float(kl_anchor.mean()),
            "penalised_reward": float(penalised.mean()),
            "entropy": float(-policy_logps.sum() / lengths.sum().clamp(min=1)),
            "length": float(lengths.mean()),
            "finished": sum(c.finished for c in comps) / n,
            "distinct_1": distinct_n(ids, 1),
            "distinct_2": distinct_n(ids, 2),
            "beta": beta,
            "loss": loss_total,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "step_seconds": time.perf_counter() - start,
        }

    def _accumulate_policy_gradient(self, comps: list[Completion], advantages: torch.Tensor, step: int) -> float:
        """Backward of the RLOO loss over ``comps`` (N,) with their ``advantages`` (N,); returns the loss.

        Dropout stays off so that the gradient is of the distribution that was sampled.
        """
        n, size = len(comps), self.cfg.update_batch_size or len(comps)
        loss_total = 0.0
        with eval_mode(self.policy):
            for lo in range(0, n, size):
                batch = completion_batch(comps[lo:lo + size], self.pad_id, self.device)
                logps, _ = sequence_logps(self.policy, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          logps=self.logps)  # (b,)
                loss = policy_gradient_loss(logps, advantages[lo:lo + size].to(logps.device), num_samples=n)
                self.guard.check("loss", loss, step + 1, before="backward")
                loss.backward()
                loss_total += float(loss.detach())
        return loss_total

    def fit(self, *, resume: bool = False) -> OnlineResult:
        """Run ``train.max_steps`` updates, logging to ``run_dir/metrics.jsonl`` (see :class:`FitLoop`).

        Args:
            resume: continue from ``run_dir/checkpoints`` when it holds a checkpoint (a finished run is
                only reloaded: its weights, anchor and history come back and no update runs).

        Raises:
            TrainingDivergedError: a non-finite reward, loss, gradient norm or weights; nothing non-finite
                is saved.
        """
        cfg = self.train_cfg
        loop = FitLoop(self.stage, self.run_dir, cfg.max_steps, self.policy, self.optimizer, self.scheduler,
                       self.guard, log_every=cfg.log_every, save_every=cfg.save_every,
                       keep_checkpoints=cfg.keep_checkpoints, progress_keys=PROGRESS_KEYS,
                       checkpoint_files=lambda: {ANCHOR_FILE: self.anchor.state_dict()},
                       on_resume=self._restore, console=self.console)
        out = loop.run(self._loop_step, state=LoopState(extra={"beta": self.controller.beta, "history": []}),
                       resume=resume)
        history = out.state.extra["history"]
        metrics = out.last_metrics or ({k: v for k, v in history[-1].items() if k != "step"} if history else {})
        return OnlineResult(steps=out.state.step, final_metrics=metrics, history=history,
                            wall_seconds=out.wall_seconds, resumed_at=out.resumed_at)

    def _loop_step(self, step: int, state: LoopState) -> dict[str, float]:
        metrics = self.train_step(step)
        state.extra["history"].append({"step": step + 1, **metrics})
        state.extra["beta"] = self.controller.beta
        return metrics

    def _restore(self, folder: Path, state: LoopState) -> None:
        """After a resume: the anchor and beta of the checkpoint."""
        self.anchor.load_state_dict(load_file(str(folder / ANCHOR_FILE)))
        self.controller.beta = state.extra["beta"]
