"""The online loop: sample k completions per prompt, reward them, penalise KL to the anchor, update the policy.

The objective is built from registered parts (``online.algorithm`` is a preset naming them,
:mod:`alignkit.online.presets`); the update after the rollout is :mod:`alignkit.online.updater`'s, the same for
every objective (one or several optimizer steps per batch of rollouts). One loop step is one batch of rollouts,
whatever the objective; every rollout comes from the current weights, unless ``online.async.max_staleness`` is 1:
then the next step's rollout is sampled (in a thread, or by the server) while this step trains, from the weights
one update old. The rollouts come from a rollout engine (:mod:`alignkit.online.engines`): this process's
decoding loop, or an inference server that receives the weights after every update
(:mod:`alignkit.online.server_engine`). The step is this module's; resume, logging, checkpoints (the anchor included) and the non-finite guards are
the fit loop the preference trainer runs too (:class:`~alignkit.train.loop.FitLoop`). Data order reuses
the preference trainer's :func:`~alignkit.train.trainer.step_order` (a permutation of the prompts fixed by
(seed, epoch)), the schedule its :func:`~alignkit.train.schedule.make_scheduler`; KL and log-probs use
:mod:`alignkit.models.kl`, so the KL logged during training is the estimator the evaluation reports.

Under ``torchrun`` every process holds the whole model and samples its share of the step's prompts
(:mod:`alignkit.online.parallel`); each prompt group's sampling is seeded from (seed, step, prompt index)
(:mod:`alignkit.online.rollout`), so N processes train exactly as one process does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from alignkit.models.generate import eos_token_ids
from alignkit.models.kl import ReferenceFn
from alignkit.models.logps import DEFAULT_LOGPS, LogpsOptions
from alignkit.models.rewards import RewardBreakdown, reward_total
from alignkit.online.anchor import FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.dynamic_sampling import FillCounts, fill_batch
from alignkit.online.engines import LocalEngine, RolloutEngine
from alignkit.online.flops import UpdateFlops
from alignkit.online.kl_control import KLController
from alignkit.online.parallel import check_world_size, local_share
from alignkit.online.rloo import distinct_n
from alignkit.online.rollout import BatchSums, Rollout
from alignkit.online.server_engine import ServerEngine
from alignkit.online.tokens import (
    ValueHead,
    ValueModel,
    hidden_size,
    value_model_from_policy,
    value_model_from_reward_model,
)
from alignkit.online.updater import Updater
from alignkit.timing import phase
from alignkit.train.checkpoint import CheckpointError
from alignkit.train.distributed import DistEnv, all_reduce_flags
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.loop import FitLoop, LoopState
from alignkit.train.schedule import make_scheduler
from alignkit.train.summary import StageSummary, steps_per_second
from alignkit.train.trainer import divergence_hint, make_optimizer, step_order

__all__ = ["OnlineResult", "OnlineTrainer", "Rollout", "ScoreFn", "rollout_engine"]

ANCHOR_FILE = "anchor.safetensors"
VALUE_FILE = "value.safetensors"  # the value head's or model's trainable tensors (never in model/)

# score(prompts, completions) -> one reward per completion (or a breakdown: the total and its components);
# prompts[i] is completion i's prompt.
ScoreFn = Callable[[list[str], list[str]], "list[float] | RewardBreakdown"]

PROGRESS_KEYS = ("reward", "true_reward", "kl", "entropy", "length", "beta")
WEIGHTS_DIR = "rollout_weights"  # under the stage folder: the weights a rollout server loads


def rollout_engine(policy: nn.Module, tokenizer, cfg: OnlineConfig, *, seed: int, run_dir: Path,
                   stage: str) -> RolloutEngine:
    """The engine ``online.rollout`` and ``online.async`` ask for: the local decoding loop on the policy (or, one
    step off-policy, on a copy of it), or an inference server."""
    if cfg.rollout.engine == "server":
        vocab = int(policy.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
        return ServerEngine(cfg.rollout, tokenizer, cfg.sampling, seed=seed, weights_dir=Path(run_dir) / WEIGHTS_DIR,
                            stage=stage, vocab_size=vocab, eos_ids=eos_token_ids(policy, tokenizer))
    return LocalEngine(policy, tokenizer, cfg.sampling, seed=seed, copy=cfg.async_.max_staleness > 0)


class _Pending:
    """A rollout being sampled in a thread (one step off-policy): its step, the weights it comes from, and the
    completions or the error once done."""

    def __init__(self, engine: RolloutEngine, prompts: list[str], indices: list[int], step: int,
                 weights_step: int) -> None:
        self.prompts, self.step, self.weights_step = prompts, step, weights_step
        self.completions: list | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.completions = engine.sample(prompts, indices, step=step, weights_step=weights_step)
            except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
                self.error = err

        # A daemon: a run stopped by an error does not wait for a sampling that nobody will use.
        self.thread = threading.Thread(target=run, name=f"rollout of step {step + 1}", daemon=True)
        self.thread.start()

    def result(self) -> list:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.completions is not None
        return self.completions


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
    """The online objective of ``cfg`` (its registered parts) on ``policy`` over ``prompts``.

    The value head or model of an advantage that needs one (``cfg.value.value_model``) is built here, trained by the same optimizer (its
    trainable tensors follow the policy's in :attr:`params`) and kept in every checkpoint as
    ``value.safetensors``; it is not part of the policy, so ``model/`` holds only the policy.

    Args:
        policy: the model; its trainable parameters are those with requires_grad.
        tokenizer: its tokenizer.
        score: the reward, ``score(prompts, texts) -> rewards``.
        cfg: the online objective (algorithm, k, sampling, beta, KL control, the PPO / GRPO settings).
        train_cfg: optimisation.
        prompts: training prompts.
        anchor: the KL anchor (:class:`~alignkit.online.anchor.FrozenAnchor` or ``EMAAnchor``).
        controller: beta, fixed or adaptive.
        run_dir: the stage folder (``metrics.jsonl``, ``checkpoints/``).
        initial: the initial model for the logged ``kl``; None when the anchor *is* the initial model.
        seed: prompt order and sampling seed.
        stage: written into every metrics record.
        logps: chunk size and packing of the log-prob forwards (``recipe.model.logps``).
        env: the data-parallel environment; every process must start from the same weights and anchor
            (``alignkit online`` broadcasts rank 0's before building the anchors).
        console: where progress and messages go.
        engine: what samples the rollouts (default: :func:`rollout_engine` of ``cfg``).
        true_score: ``online.true_reward`` as ``score(prompts, texts)``: measured on every rollout and logged
            as ``true_reward`` beside the proxy ``reward``, never trained on; None: off.
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
        env: DistEnv | None = None,
        console: Console | None = None,
        true_score: ScoreFn | None = None,
        engine: RolloutEngine | None = None,
    ) -> None:
        self.policy, self.tokenizer, self.score, self.true_score = policy, tokenizer, score, true_score
        self.env = env or DistEnv()
        self.cfg, self.train_cfg = cfg, train_cfg
        self.prompts = list(prompts)
        self.anchor, self.controller, self.initial = anchor, controller, initial
        self.run_dir, self.seed, self.stage, self.logps = Path(run_dir), seed, stage, logps
        self.console = console or Console(stderr=True)
        self.fill_counts: FillCounts | None = None  # dynamic sampling's counts of the latest rollout
        self.guard = DivergenceGuard(stage, divergence_hint("train", train_cfg))
        if len(self.prompts) < train_cfg.prompts_per_step:
            raise ValueError(f"{stage}: {len(self.prompts)} training prompts are fewer than one step "
                             f"(train.prompts_per_step={train_cfg.prompts_per_step})")
        check_world_size(train_cfg.prompts_per_step, self.env.world_size)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the policy has no trainable parameters")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(policy, tokenizer)[0]
        self.device = next(policy.parameters()).device
        self.steps_per_epoch = len(self.prompts) // train_cfg.prompts_per_step
        self.value = self._value_model(policy, tokenizer, cfg)
        if self.value is not None:
            self.params += [p for p in self.value.parameters() if p.requires_grad]
        self.flops = UpdateFlops.of(policy, self.value)  # the update's FLOPs, for the run's time table
        self.updater = Updater(self, self.value)
        self.engine = engine if engine is not None else rollout_engine(policy, tokenizer, cfg, seed=seed,
                                                                      run_dir=self.run_dir, stage=stage)
        self.max_staleness = cfg.async_.max_staleness
        self._pending: _Pending | None = None
        # The schedule counts optimizer steps; max_steps and warmup_steps count loop steps (batches of rollouts).
        updates = self.updater.updates
        self.optimizer = make_optimizer(self.params, train_cfg)
        self.scheduler = make_scheduler(self.optimizer, warmup_steps=train_cfg.warmup_steps * updates,
                                        total_steps=train_cfg.max_steps * updates, schedule=train_cfg.schedule)

    def _value_model(self, policy: nn.Module, tokenizer, cfg: OnlineConfig) -> ValueHead | ValueModel | None:
        """The value head (on the policy's hidden states) or value model of an advantage that needs one, else None."""
        if not cfg.advantage_spec.needs_values:
            return None
        assert cfg.value is not None  # OnlineConfig fills the section in
        if cfg.value.value_model == "policy_head":
            return ValueHead(hidden_size(policy), device=self.device)
        if cfg.value.value_init == "policy":
            return value_model_from_policy(policy)
        dtype = next(policy.parameters()).dtype
        return value_model_from_reward_model(cfg.value.value_init, tokenizer, self.device, dtype)

    # -----------------------------------------------------------------------------------------------------
    def step_prompts(self, step: int) -> list[str]:
        """The prompts of update ``step``: a slice of a (seed, epoch)-fixed permutation."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = step_order(len(self.prompts), self.seed, epoch)
        b = self.train_cfg.prompts_per_step
        return [self.prompts[i] for i in order[position * b:(position + 1) * b]]

    def _push(self, weights_step: int) -> None:
        """Give the engine the current weights (the policy after ``weights_step`` updates), unless it has them."""
        if self.engine.synced != weights_step:
            with phase("weight sync"):
                self.engine.sync(self.policy, weights_step)

    def rollout(self, step: int) -> Rollout:
        """Sample k completions for each of this process's prompts of the step from the current policy; reward them.

        With ``online.dynamic_sampling`` the groups whose rewards all agree are sampled again from other prompts
        (:func:`~alignkit.online.dynamic_sampling.fill_batch`); what that took is kept in :attr:`fill_counts`.
        """
        offset, prompts = local_share(self.step_prompts(step), self.env)
        positions = list(range(offset, offset + len(prompts)))
        self._push(step)
        roll = self._sampled(prompts, positions, step)
        dynamic = self.cfg.dynamic_sampling
        if dynamic is None or not dynamic.enabled:
            return roll
        roll, self.fill_counts = fill_batch(
            roll, positions, lambda chosen, streams: self._sampled(chosen, streams, step), self.prompts,
            k=self.cfg.samples_per_prompt, seed=self.seed, step=step, total=self.train_cfg.prompts_per_step,
            max_extra_rounds=dynamic.max_extra_rounds)
        return roll

    def _sampled(self, prompts: list[str], streams: Sequence[int], step: int) -> Rollout:
        """k completions of each prompt from the engine's current weights, each group from the sampling stream of
        its position; rewarded."""
        with phase("generation"):
            completions = self.engine.sample(prompts, streams, step=step, weights_step=step)
        return self._scored(prompts, completions)

    def _scored(self, prompts: list[str], completions: list) -> Rollout:
        """The rollout of ``completions`` with their rewards (and true rewards when measured)."""
        texts = [c.text for c in completions]
        scored = self.score([prompts[c.prompt_index] for c in completions], texts)
        rewards = reward_total(scored)
        components = scored.components if isinstance(scored, RewardBreakdown) else {}
        if len(rewards) != len(completions):
            raise ValueError(f"the reward returned {len(rewards)} values for {len(completions)} completions")
        true_rewards = None
        if self.true_score is not None:  # measured, never trained on
            measured = reward_total(self.true_score([prompts[c.prompt_index] for c in completions], texts))
            if len(measured) != len(completions):
                raise ValueError(f"the true reward returned {len(measured)} values for {len(completions)} completions")
            true_rewards = torch.tensor(measured, dtype=torch.float32)
        return Rollout(prompts, completions, torch.tensor(rewards, dtype=torch.float32), true_rewards,
                       components={k: torch.tensor(v, dtype=torch.float32) for k, v in components.items()})

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of rollouts and its update; returns the step's metrics (over every process's samples)."""
        start = time.perf_counter()
        if self.max_staleness == 0:
            roll = self.rollout(step)
            metrics = self.updater.step(step, roll)
        else:
            roll, metrics = self._off_policy_step(step)
        if self.fill_counts is not None:
            metrics.update(self._fill_metrics(self.fill_counts))
        return {**metrics, **self.component_metrics(roll), "step_seconds": time.perf_counter() - start}

    def component_metrics(self, roll: Rollout) -> dict[str, float]:
        """``reward/<name>``: the mean of each component of a combined reward over every process's samples."""
        if not roll.components:
            return {}
        names = sorted(roll.components)  # the same names, in the same order, on every process
        sums = all_reduce_flags([float(len(roll.completions)),
                                 *(float(roll.components[n].double().sum()) for n in names)], self.env)
        return {f"reward/{n}": total / max(sums[0], 1.0) for n, total in zip(names, sums[1:], strict=True)}

    def _off_policy_step(self, step: int) -> tuple[Rollout, dict[str, float]]:
        """One step off-policy: this step's rollout was sampled (from the weights one update old) while the last
        step trained, and the next one is sampled while this one trains; the first step (and the first after a
        resume) samples its own, from the current weights."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.step == step:
            with phase("rollout wait"):
                roll, weights_step = self._scored(pending.prompts, pending.result()), pending.weights_step
            roll.staleness = step - weights_step
        else:
            roll, weights_step = self.rollout(step), step
        if step + 1 < self.train_cfg.max_steps:
            offset, prompts = local_share(self.step_prompts(step + 1), self.env)
            self._push(step)
            self._pending = _Pending(self.engine, prompts, list(range(offset, offset + len(prompts))), step + 1, step)
        metrics = self.updater.step(step, roll)
        if self._pending is not None:
            with phase("rollout wait"):
                self._pending.thread.join()  # it samples from the engine's weights: they change next
            self._push(step + 1)
        return roll, {**metrics, "rollout_staleness": float(step - weights_step)}

    def _fill_metrics(self, counts: FillCounts) -> dict[str, float]:
        """Dynamic sampling's counts over every process: groups dropped (sampled again), groups still uniform at
        the cap, and the most extra rounds any process ran (one all-reduce)."""
        cap = self.cfg.dynamic_sampling.max_extra_rounds if self.cfg.dynamic_sampling is not None else 0
        ran = [float(counts.rounds > r) for r in range(cap)]  # summed: > 0 up to the largest count of rounds
        summed = all_reduce_flags([counts.resampled, counts.uniform, *ran], self.env)
        return {"dropped_groups": summed[0], "uniform_groups": summed[1],
                "extra_rounds": float(sum(v > 0 for v in summed[2:]))}

    def sample_metrics(self, batch: BatchSums, ids: list[list[int]], *, beta: float) -> dict[str, float]:
        """The metrics of the step's samples every algorithm logs (``ids``: every process's completion ids);
        ``true_reward`` only when ``online.true_reward`` is set."""
        true = {"true_reward": batch.mean("true_reward")} if self.true_score is not None else {}
        return {
            "reward": batch.mean("reward"),
            **true,
            "kl": batch.mean("kl_initial"),
            "kl_anchor": batch.mean("kl_anchor"),
            "penalised_reward": batch.mean("penalised"),
            "entropy": -batch.logps / max(batch.tokens, 1.0),
            "length": batch.mean("tokens"),
            "finished": batch.mean("finished"),
            "distinct_1": distinct_n(ids, 1),
            "distinct_2": distinct_n(ids, 2),
            "beta": beta,
        }

    def batch_sums(self, roll: Rollout, policy_logps: torch.Tensor, kl_anchor: torch.Tensor,
                   kl_initial: torch.Tensor, penalised: torch.Tensor) -> BatchSums:
        """This process's sums, summed over processes in one all-reduce."""
        comps = roll.completions
        local = {
            "samples": float(len(comps)),
            "reward": float(roll.rewards.double().sum()),
            "kl_anchor": float(kl_anchor.double().sum()),
            "kl_initial": float(kl_initial.double().sum()),
            "penalised": float(penalised.double().sum()),
            "logps": float(policy_logps.double().sum()),
            "tokens": float(sum(c.num_tokens for c in comps)),
            "finished": float(sum(c.finished for c in comps)),
            "true_reward": float(roll.true_rewards.double().sum()) if roll.true_rewards is not None else 0.0,
        }
        names = [f.name for f in fields(BatchSums)]
        return BatchSums(*all_reduce_flags([local[name] for name in names], self.env))

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
                       checkpoint_files=self._checkpoint_files,
                       on_resume=self._restore, env=self.env, console=self.console)
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

    def _checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint keeps besides the policy's weights and the optimizer: the anchor, the value model."""
        files = {ANCHOR_FILE: self.anchor.state_dict()}
        if self.value is not None:
            files[VALUE_FILE] = {n: p.detach() for n, p in self.value.named_parameters() if p.requires_grad}
        return files

    def _restore(self, folder: Path, state: LoopState) -> None:
        """After a resume: the anchor, beta and the value head or model of the checkpoint."""
        self.anchor.load_state_dict(load_file(str(folder / ANCHOR_FILE)))
        self.controller.beta = state.extra["beta"]
        if self.value is not None:
            path = folder / VALUE_FILE
            if not path.is_file():
                raise CheckpointError(f"checkpoint {folder} has no {VALUE_FILE}: it is not the checkpoint of a run with a value model "
                                      "(resume with the recipe that wrote it)")
            tensors, params = load_file(str(path)), dict(self.value.named_parameters())
            missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
            if missing or set(tensors) - set(params):
                raise CheckpointError(f"checkpoint {folder}: {VALUE_FILE} does not match this value model "
                                      f"(e.g. {(missing or sorted(set(tensors) - set(params)))[:3]})")
            with torch.no_grad():
                for name, value in tensors.items():
                    params[name].copy_(value.to(params[name].device, params[name].dtype))
