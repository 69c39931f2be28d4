"""The online loop: sample k completions per prompt, reward them, penalise KL to the anchor, one RLOO update.

One optimizer step per batch of rollouts (on-policy: the samples always come from the current weights).
Data order reuses the preference trainer's :func:`~alignkit.train.trainer.step_order` (a permutation of
the prompts fixed by (seed, epoch)), the schedule its :func:`~alignkit.train.schedule.make_scheduler`, the
log its :class:`~alignkit.train.metrics.MetricsWriter`; KL and log-probs use :mod:`alignkit.eval.kl`, so the
KL logged during training is the estimator the evaluation reports.
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
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit.cache import write_atomic
from alignkit.eval.kl import ReferenceFn, completion_batch, completion_logps
from alignkit.models.generate import Completion, eos_token_ids, eval_mode, generate_completions
from alignkit.models.logps import sequence_logps
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
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from alignkit.train.metrics import MetricsWriter
from alignkit.train.schedule import make_scheduler
from alignkit.train.summary import StageSummary
from alignkit.train.trainer import make_optimizer, step_order

__all__ = ["OnlineResult", "OnlineTrainer", "Rollout", "ScoreFn"]

ANCHOR_FILE = "anchor.safetensors"

# score(prompts, completions) -> one reward per completion; prompts[i] is completion i's prompt.
ScoreFn = Callable[[list[str], list[str]], list[float]]


def write_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` as safetensors under a temporary name, then rename into place."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


@dataclass
class Rollout:
    """One step's samples: P prompts x k completions, prompt-major, and their rewards (P * k,)."""

    prompts: list[str]
    completions: list[Completion]
    rewards: torch.Tensor


@dataclass
class OnlineResult:
    steps: int
    final_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0

    def summary(self) -> StageSummary:
        """The stage as the report keeps it."""
        first = self.history[0] if self.history else {}
        return StageSummary(
            steps=self.steps, wall_seconds=self.wall_seconds,
            steps_per_second=self.steps / self.wall_seconds if self.wall_seconds else None,
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
        run_dir: where ``metrics.jsonl`` goes.
        initial: the initial model for the logged ``kl``; None when the anchor *is* the initial model.
        seed: prompt order and sampling seed.
        stage: written into every metrics record.
        chunk_size: positions per lm-head chunk for log-probs.
        padding_free: pack completions without padding for the log-prob forwards (see sequence_logps).
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
        chunk_size: int = 1024,
        padding_free: bool = True,
        console: Console | None = None,
    ) -> None:
        self.policy, self.tokenizer, self.score = policy, tokenizer, score
        self.padding_free = padding_free
        self.cfg, self.train_cfg = cfg, train_cfg
        self.prompts = list(prompts)
        self.anchor, self.controller, self.initial = anchor, controller, initial
        self.run_dir, self.seed, self.stage, self.chunk_size = Path(run_dir), seed, stage, chunk_size
        self.console = console or Console(stderr=True)
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
        completions = generate_completions(
            self.policy, self.tokenizer, prompts, max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature, num_return_sequences=self.cfg.samples_per_prompt,
            batch_size=self.cfg.generation_batch_size,
            seed=(self.seed * 1_000_003 + step) * 1009,  # disjoint per-batch seeds across steps
        )
        texts = [c.text for c in completions]
        rewards = self.score([prompts[c.prompt_index] for c in completions], texts)
        if len(rewards) != len(completions):
            raise ValueError(f"the reward returned {len(rewards)} values for {len(completions)} completions")
        return Rollout(prompts, completions, torch.tensor(rewards, dtype=torch.float32))

    def _logps(self, model: nn.Module, completions: list[Completion]) -> torch.Tensor:
        size = self.cfg.update_batch_size or len(completions)
        return completion_logps(model, completions, batch_size=size, pad_token_id=self.pad_id)

    def train_step(self, step: int) -> dict[str, float]:
        """One rollout and one optimizer step; returns the step's metrics."""
        start = time.perf_counter()
        roll = self.rollout(step)
        comps, n, k = roll.completions, len(roll.completions), self.cfg.samples_per_prompt
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
        advantages = leave_one_out_advantages(penalised.view(-1, k)).flatten()  # (N,)

        # The update: dropout stays off so the gradient is of the distribution that was sampled.
        size = self.cfg.update_batch_size or n
        loss_total = 0.0
        with eval_mode(self.policy):
            for lo in range(0, n, size):
                batch = completion_batch(comps[lo:lo + size], self.pad_id, self.device)
                logps, _ = sequence_logps(self.policy, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          chunk_size=self.chunk_size, padding_free=self.padding_free)
                loss = policy_gradient_loss(logps, advantages[lo:lo + size].to(logps.device), num_samples=n)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.stage}: non-finite loss at step {step + 1}")
                loss.backward()
                loss_total += float(loss.detach())
        max_norm = self.train_cfg.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
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
            "grad_norm": float(grad_norm),
            "learning_rate": lr,
            "step_seconds": time.perf_counter() - start,
        }

    def fit(self, *, resume: bool = False) -> OnlineResult:
        """Run ``train.max_steps`` updates, logging to ``run_dir/metrics.jsonl``.

        Args:
            resume: continue from ``run_dir/checkpoints`` when it holds a checkpoint (a finished run is
                only reloaded: its weights, anchor and history come back and no update runs).
        """
        total = self.train_cfg.max_steps
        checkpoints = self.run_dir / "checkpoints"
        state: dict[str, Any] = {"step": 0, "beta": self.controller.beta, "history": []}
        ckpt = latest_checkpoint(checkpoints) if resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler)
            self.anchor.load_state_dict(load_file(str(ckpt / ANCHOR_FILE)))
            self.controller.beta = state["beta"]
            self.console.print(f"[cyan]{self.stage}: resumed from {ckpt} (step {state['step']})[/]")
        writer = MetricsWriter(self.run_dir / "metrics.jsonl",
                               resume_from_step=state["step"] if ckpt is not None else None)
        started, history = time.perf_counter(), state["history"]
        metrics: dict[str, float] = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
        every, save_every = max(1, total // 10), self.train_cfg.save_every
        try:
            for step in range(state["step"], total):
                metrics = self.train_step(step)
                history.append({"step": step + 1, **metrics})
                if (step + 1) % self.train_cfg.log_every == 0 or step + 1 == total:
                    writer.write({"stage": self.stage, "step": step + 1, **metrics})
                if (step + 1) % every == 0 or step == 0:
                    self.console.print(f"{self.stage} {step + 1}/{total}  " + "  ".join(
                        f"{key}={metrics[key]:.3g}" for key in ("reward", "kl", "entropy", "length", "beta")))
                if not math.isfinite(metrics["reward"]):
                    raise FloatingPointError(f"{self.stage}: the reward is not finite at step {step + 1}")
                if (save_every and (step + 1) % save_every == 0) or step + 1 == total:
                    self._save(checkpoints, {"step": step + 1, "beta": self.controller.beta, "history": history})
        finally:
            writer.close()
        return OnlineResult(steps=total, final_metrics=metrics, history=history,
                            wall_seconds=time.perf_counter() - started)

    def _save(self, checkpoints: Path, state: dict[str, Any]) -> None:
        folder = save_checkpoint(checkpoints / f"step-{state['step']:07d}", model=self.policy,
                                 optimizer=self.optimizer, scheduler=self.scheduler, state=state, pointer=None)
        # The anchor goes into the finished folder before the pointer names it, so `latest` is always whole.
        write_tensors_atomic(folder / ANCHOR_FILE, self.anchor.state_dict())
        write_atomic(checkpoints / "latest", folder.name)
        prune_checkpoints(checkpoints, self.train_cfg.keep_checkpoints)
