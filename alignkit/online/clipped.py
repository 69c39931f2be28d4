"""PPO and GRPO on the online trainer: several clipped optimizer steps per rollout.

The rollout, the reward, the KL anchor, beta and its controller, the batch sums and the logged sample metrics,
checkpoints, resume and data parallelism are :class:`~alignkit.online.trainer.OnlineTrainer`'s, shared with
RLOO; this module is what differs after the rollout (the math is :mod:`alignkit.online.ppo` and
:mod:`alignkit.online.grpo`):

1. **Plan.** The step's N completions (every process's, in the global order: rank-major, prompt-major) are
   cut into minibatches for every pass: PPO ``epochs`` passes of ``N / minibatch_size`` minibatches, each
   pass a fresh permutation seeded from (seed, step, pass); GRPO ``iterations`` passes over the whole rollout.
   Each minibatch is one optimizer step. A process takes the completions of each minibatch that it sampled
   (an uneven or empty share is fine: every loss term is divided by the whole minibatch's token or sequence
   count, and gradients are summed over processes), in ``online.update_batch_size`` micro-batches. The plan
   depends on the seed and the step only, so 1 and N processes take the same optimizer steps.
2. **Rollout pass** (no gradient), in exactly the micro-batches of the first pass: the policy's per-token
   log-probs (the "old" policy of every ratio), its entropies and (PPO) values, then the anchor's log-probs
   and, with an EMA anchor, the initial model's. The first optimizer step's forwards see the same rows in the
   same batches, so its ratio is exactly 1.
3. **Advantages.** PPO: per-token rewards -beta (log pi_old - log pi_anchor) plus the reward at the last
   token, GAE(gamma, lambda) with the rollout values, whitened with the mean and variance of every process's
   tokens (their sum, sum of squares and count all-reduced). GRPO: the group-relative advantages of each
   prompt's samples (whole groups live on one process), of the reward (``kl: loss``) or of the penalised reward
   r - beta KL (``kl: reward``).
4. **Updates.** For every minibatch: the clipped surrogate (+ ``vf_coef`` x the clipped value loss; GRPO: its
   token loss with the k3 term), backward per micro-batch, gradients and a non-finite flag all-reduced, one
   :func:`~alignkit.train.loop.optimizer_step` (clipping, the schedule, the divergence guard).

The statistics of every optimizer step (losses, approx-KL, clip fractions, ratio) are summed over processes
once at the end of the step and kept in :attr:`ClippedUpdater.records`; the logged metrics are their means
over the step's optimizer steps (token-weighted for per-token statistics).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from alignkit.eval.kl import ReferenceFn
from alignkit.models.generate import Completion, eval_mode
from alignkit.models.logps import LogpsOptions
from alignkit.online.anchor import FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.flops import UpdateFlops
from alignkit.online.grpo import group_advantages, grpo_token_loss
from alignkit.online.kl_control import KLController
from alignkit.online.parallel import gather_sequences
from alignkit.online.ppo import (
    clipped_surrogate_loss,
    clipped_value_loss,
    gae,
    masked_moments,
    token_rewards,
    whiten,
)
from alignkit.online.rloo import penalised_rewards, sequence_kl_estimate
from alignkit.online.rollout import BatchSums, Rollout
from alignkit.online.tokens import TokenOutputs, ValueHead, ValueModel, pad_rows, token_forward, value_forward
from alignkit.timing import phase
from alignkit.train.distributed import DistEnv, all_reduce_flags, all_reduce_gradients
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.loop import optimizer_step

__all__ = ["ClippedUpdater", "TrainerParts", "local_microbatches", "update_plan", "updates_per_step"]


class TrainerParts(Protocol):
    """What the updater uses of :class:`~alignkit.online.trainer.OnlineTrainer` (the shared harness)."""

    policy: nn.Module
    cfg: OnlineConfig
    train_cfg: OnlineTrainConfig
    env: DistEnv
    device: torch.device
    pad_id: int
    logps: LogpsOptions
    seed: int
    anchor: FrozenAnchor
    controller: KLController
    initial: ReferenceFn | None
    guard: DivergenceGuard
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    flops: UpdateFlops

    def batch_sums(self, roll: Rollout, policy_logps: Tensor, kl_anchor: Tensor, kl_initial: Tensor,
                   penalised: Tensor) -> BatchSums: ...

    def sample_metrics(self, batch: BatchSums, ids: list[list[int]], *, beta: float) -> dict[str, float]: ...

# Per optimizer step, summed over micro-batches and processes (token-weighted where it says tokens).
RECORD_KEYS = ("loss", "policy_loss", "value_loss", "tokens", "approx_kl_tokens", "clip_fraction_tokens",
               "ratio_tokens", "value_clip_fraction_tokens", "k3_tokens")


def updates_per_step(num_samples: int, minibatch_size: int | None, passes: int) -> int:
    """Optimizer steps per rollout: ``passes`` x the minibatches of ``num_samples`` completions.

    Raises:
        ValueError: a minibatch size that does not divide the rollout, naming ``online.ppo.minibatch_size``.
    """
    size = minibatch_size or num_samples
    if size > num_samples or num_samples % size:
        raise ValueError(f"online.ppo.minibatch_size={size} must divide the {num_samples} completions of a step "
                         "(train.prompts_per_step x online.samples_per_prompt)")
    return passes * (num_samples // size)


def _pass_seed(seed: int, step: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"minibatches:{seed}:{step}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def update_plan(num_samples: int, minibatch_size: int | None, passes: int, *, seed: int, step: int) -> list[list[int]]:
    """The global completion indices of every optimizer step of a rollout, pass-major.

    Each pass is a permutation of ``range(num_samples)`` seeded from (seed, step, pass) cut into minibatches
    (the identity when one minibatch holds the whole rollout).
    """
    size = minibatch_size or num_samples
    per_pass = updates_per_step(num_samples, minibatch_size, 1)
    plan: list[list[int]] = []
    for epoch in range(passes):
        if per_pass == 1:
            order = list(range(num_samples))
        else:
            generator = torch.Generator().manual_seed(_pass_seed(seed, step, epoch))
            order = torch.randperm(num_samples, generator=generator).tolist()
        plan += [order[j * size:(j + 1) * size] for j in range(per_pass)]
    return plan


def local_microbatches(indices: Sequence[int], offset: int, count: int, size: int | None) -> list[list[int]]:
    """This process's completions of a minibatch (global ``indices``; it holds ``offset .. offset + count - 1``)
    as local indices, in micro-batches of ``size`` (None: all at once)."""
    local = [g - offset for g in indices if offset <= g < offset + count]
    if not local:
        return []
    size = size or len(local)
    return [local[i:i + size] for i in range(0, len(local), size)]


@dataclass
class _Rollout:
    """Per local completion (1-D tensors over its tokens): what the rollout pass and the advantages give."""

    old_logps: list[Tensor]
    anchor_logps: list[Tensor]
    initial_logps: list[Tensor] | None
    values: list[Tensor] | None
    entropy: float  # sum over this process's tokens


class ClippedUpdater:
    """The PPO or GRPO part of a step (see the module docstring); built by the trainer for those algorithms.

    Attributes:
        value: the value head or model (PPO), else None; its trainable tensors are in ``trainer.params``.
        records: the statistics of every optimizer step so far, with their ``step`` and ``update``.
    """

    def __init__(self, trainer: TrainerParts, value: ValueHead | ValueModel | None) -> None:
        self.trainer, self.value = trainer, value
        cfg = trainer.cfg
        self.algorithm = cfg.algorithm
        if self.algorithm == "ppo":
            assert cfg.ppo is not None  # OnlineConfig fills the section in
            self.minibatch_size, self.passes = cfg.ppo.minibatch_size, cfg.ppo.epochs
        else:
            assert cfg.grpo is not None
            self.minibatch_size, self.passes = None, cfg.grpo.iterations
        self.num_samples = trainer.train_cfg.prompts_per_step * cfg.samples_per_prompt
        self.updates = updates_per_step(self.num_samples, self.minibatch_size, self.passes)
        self.records: list[dict[str, float]] = []

    # -----------------------------------------------------------------------------------------------------
    def step(self, step: int, roll: Rollout) -> dict[str, float]:
        """Everything of a PPO / GRPO step after the rollout: metrics of the step (over every process)."""
        t, cfg = self.trainer, self.trainer.cfg
        comps = roll.completions
        ids = gather_sequences([c.completion_ids for c in comps], cfg.max_new_tokens, t.env, t.device)
        lengths = [len(x) for x in ids]  # every process's completions, in the global order
        offset = t.env.rank * len(comps)
        plan = update_plan(len(lengths), self.minibatch_size, self.passes, seed=t.seed, step=step)
        per_pass = len(plan) // self.passes
        first_pass = [mb for indices in plan[:per_pass]
                      for mb in local_microbatches(indices, offset, len(comps), cfg.update_batch_size)]
        data = self._rollout_pass(comps, first_pass)

        policy_logps = torch.stack([lp.sum() for lp in data.old_logps]).float().cpu()
        kl_anchor = sequence_kl_estimate(policy_logps, torch.stack([a.sum() for a in data.anchor_logps]).cpu())
        kl_initial = kl_anchor if data.initial_logps is None else sequence_kl_estimate(
            policy_logps, torch.stack([a.sum() for a in data.initial_logps]).cpu())
        beta = t.controller.beta
        grpo = cfg.grpo
        penalised = (roll.rewards.float() if grpo is not None and grpo.kl == "loss"
                     else penalised_rewards(roll.rewards, kl_anchor, beta))
        batch = t.batch_sums(roll, policy_logps, kl_anchor, kl_initial, penalised)
        t.guard.check("reward", batch.reward, step + 1, before="the update",
                      hint="The reward function must return finite numbers.")

        extra: dict[str, float] = {}
        if self.algorithm == "ppo":
            advantages, returns, extra = self._ppo_advantages(comps, roll.rewards, data, beta)
            kl_coef = 0.0
        else:
            assert grpo is not None
            scores = penalised  # the reward (kl: loss) or r - beta KL (kl: reward)
            group = group_advantages(scores, cfg.samples_per_prompt, scale_by_std=grpo.scale_rewards)
            advantages, returns = [group[i:i + 1] for i in range(len(comps))], None
            kl_coef = (grpo.kl_coef if grpo.kl_coef is not None else beta) if grpo.kl == "loss" else 0.0
            (entropy,) = all_reduce_flags([data.entropy], t.env)
            extra = {"token_entropy": entropy / max(batch.tokens, 1.0)}

        update = self._update(step, plan, comps, lengths, data, advantages, returns, kl_coef)
        t.anchor.update()
        t.controller.update(batch.mean("kl_anchor"))
        metrics = t.sample_metrics(batch, ids, beta=kl_coef if grpo is not None and grpo.kl == "loss" else beta)
        return {**metrics, **extra, **update}

    # -----------------------------------------------------------------------------------------------------
    def _forward(self, comps: Sequence[Completion], *, entropy: bool = False) -> TokenOutputs:
        t = self.trainer
        head = self.value if isinstance(self.value, ValueHead) else None
        out = token_forward(t.policy, comps, t.pad_id, chunk_size=t.logps.chunk_size, value_head=head,
                            entropy=entropy)
        if isinstance(self.value, ValueModel):
            out.values = value_forward(self.value, comps, t.pad_id)
        return out

    @torch.no_grad()
    def _rollout_pass(self, comps: list[Completion], microbatches: list[list[int]]) -> _Rollout:
        """Old log-probs, values and entropies, then the anchor's (and the initial model's) log-probs."""
        t = self.trainer
        n = len(comps)
        old: list[Tensor] = [torch.empty(0)] * n
        values: list[Tensor] | None = [torch.empty(0)] * n if self.value is not None else None
        entropy = 0.0
        value = self.value if self.value is not None else nn.Identity()
        with phase("log-probs"), eval_mode(t.policy), eval_mode(value):
            for mb in microbatches:
                out = self._forward([comps[i] for i in mb], entropy=True)
                t.flops.count_forward([comps[i] for i in mb], value=self.value is not None)
                assert out.entropy is not None
                entropy += float(out.entropy[out.mask].double().sum())
                for row, i in enumerate(mb):
                    width = comps[i].num_tokens
                    old[i] = out.logps[row, :width]
                    if values is not None:
                        assert out.values is not None
                        values[i] = out.values[row, :width]
        anchor = self._reference_logps(t.anchor.model_context, comps, microbatches)
        initial = self._reference_logps(t.initial, comps, microbatches) if t.initial is not None else None
        return _Rollout(old, anchor, initial, values, entropy)

    def _reference_logps(self, context, comps: list[Completion], microbatches: list[list[int]]) -> list[Tensor]:
        t = self.trainer
        out: list[Tensor] = [torch.empty(0)] * len(comps)
        with phase("reference log-probs"), context() as model, eval_mode(model):
            for mb in microbatches:
                logps = token_forward(model, [comps[i] for i in mb], t.pad_id, chunk_size=t.logps.chunk_size).logps
                t.flops.count_forward([comps[i] for i in mb])
                for row, i in enumerate(mb):
                    out[i] = logps[row, :comps[i].num_tokens]
        return out

    def _ppo_advantages(self, comps: list[Completion], rewards: Tensor, data: _Rollout,
                        beta: float) -> tuple[list[Tensor], list[Tensor], dict[str, float]]:
        """Per-token advantages (whitened over every process's tokens) and value targets of each completion."""
        t, ppo = self.trainer, self.trainer.cfg.ppo
        assert ppo is not None and data.values is not None
        kl = pad_rows([o - a for o, a in zip(data.old_logps, data.anchor_logps, strict=True)])
        values = pad_rows(data.values)
        lengths = torch.tensor([c.num_tokens for c in comps], device=kl.device)
        mask = torch.arange(kl.shape[1], device=kl.device).unsqueeze(0) < lengths.unsqueeze(1)
        token_r = token_rewards(kl, rewards.to(kl.device), mask, beta)
        advantages, returns = gae(token_r, values, mask, ppo.gamma, ppo.lam)
        # One all-reduce: the advantages' moments, the explained variance's sums, the entropy.
        g = torch.where(mask, returns.double(), 0.0)
        residual = torch.where(mask, (returns - values).double(), 0.0)
        local = [*masked_moments(advantages, mask), float(g.sum()), float((g * g).sum()),
                 float(residual.sum()), float((residual * residual).sum()), data.entropy]
        a_sum, a_sq, count, g_sum, g_sq, r_sum, r_sq, entropy = all_reduce_flags(local, t.env)
        if ppo.whiten_advantages:
            advantages = whiten(advantages, mask, moments=(a_sum, a_sq, count))
        var_g = g_sq / count - (g_sum / count) ** 2
        var_r = r_sq / count - (r_sum / count) ** 2
        # Undefined when the returns do not vary beyond float32 rounding (a constant reward with lam = 1): NaN
        # here, null in metrics.jsonl (alignkit.jsonio), rather than a ratio of rounding noise.
        varies = var_g > (1e-6 * max(1.0, abs(g_sum / count))) ** 2
        extra = {
            "explained_variance": 1.0 - var_r / var_g if varies else math.nan,
            "token_entropy": entropy / max(count, 1.0),
            "value_mean": g_sum / count - r_sum / count,  # mean rollout value: mean(G) - mean(G - V)
            "return_mean": g_sum / count,
        }
        split = [c.num_tokens for c in comps]
        return ([advantages[i, :n] for i, n in enumerate(split)], [returns[i, :n] for i, n in enumerate(split)],
                extra)

    # -----------------------------------------------------------------------------------------------------
    def _update(self, step: int, plan: list[list[int]], comps: list[Completion], lengths: list[int],
                data: _Rollout, advantages: list[Tensor], returns: list[Tensor] | None,
                kl_coef: float) -> dict[str, float]:
        """Every optimizer step of the plan; the means of their statistics (over every process)."""
        t = self.trainer
        offset, micro = t.env.rank * len(comps), t.cfg.update_batch_size
        value = self.value if self.value is not None else nn.Identity()
        local_records, grad_norms, rates = [], [], []
        for indices in plan:
            tokens = float(sum(lengths[g] for g in indices))
            record = dict.fromkeys(RECORD_KEYS, 0.0)
            non_finite = 0
            # The offline trainer's phases (alignkit.timing): where each optimizer step's time goes.
            with phase("forward/backward"), eval_mode(t.policy), eval_mode(value):
                for mb in local_microbatches(indices, offset, len(comps), micro):
                    loss = self._microbatch_loss([comps[i] for i in mb], mb, data, advantages, returns, kl_coef,
                                                 tokens=tokens, sequences=len(indices), record=record)
                    t.flops.count_training([comps[i] for i in mb])
                    if t.env.enabled:
                        non_finite += not math.isfinite(float(loss.detach()))
                    else:
                        t.guard.check("loss", loss, step + 1, before="backward")
                    loss.backward()
                    record["loss"] += float(loss.detach())
            if t.env.enabled:  # a process with no completion in this minibatch still sends (zero) gradients
                for p in t.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            (processes_non_finite,) = all_reduce_gradients(t.params, t.env, extra=(float(non_finite > 0),))
            t.guard.check_processes("loss", processes_non_finite, t.env.world_size, step + 1,
                                    before="the optimizer step")
            with phase("optimizer"):
                grad_norm, lr = optimizer_step(t.params, t.optimizer, t.scheduler,
                                               max_grad_norm=t.train_cfg.max_grad_norm, guard=t.guard, step=step + 1)
            grad_norms.append(grad_norm)
            rates.append(lr)
            local_records.append([record[k] for k in RECORD_KEYS])
        flat = all_reduce_flags([v for r in local_records for v in r], t.env)
        width = len(RECORD_KEYS)
        summed = [dict(zip(RECORD_KEYS, flat[u * width:(u + 1) * width], strict=True)) for u in range(len(plan))]
        for u, r in enumerate(summed):
            tok = max(r["tokens"], 1.0)
            record = {"step": step + 1, "update": u + 1, "loss": r["loss"], "policy_loss": r["policy_loss"],
                      "approx_kl": r["approx_kl_tokens"] / tok, "clip_fraction": r["clip_fraction_tokens"] / tok,
                      "ratio_mean": r["ratio_tokens"] / tok, "grad_norm": grad_norms[u], "learning_rate": rates[u]}
            if self.algorithm == "ppo":
                record.update(value_loss=r["value_loss"], value_clip_fraction=r["value_clip_fraction_tokens"] / tok)
            else:
                record["k3_kl"] = r["k3_tokens"] / tok
            self.records.append(record)
        total_tokens = max(sum(r["tokens"] for r in summed), 1.0)
        mean = len(summed)
        out = {
            "loss": sum(r["loss"] for r in summed) / mean,
            "policy_loss": sum(r["policy_loss"] for r in summed) / mean,
            "approx_kl": sum(r["approx_kl_tokens"] for r in summed) / total_tokens,
            "clip_fraction": sum(r["clip_fraction_tokens"] for r in summed) / total_tokens,
            "ratio_mean": sum(r["ratio_tokens"] for r in summed) / total_tokens,
            "grad_norm": sum(grad_norms) / mean,
            "learning_rate": rates[0],
            "optimizer_steps": float(mean),
        }
        if self.algorithm == "ppo":
            out["value_loss"] = sum(r["value_loss"] for r in summed) / mean
            out["value_clip_fraction"] = sum(r["value_clip_fraction_tokens"] for r in summed) / total_tokens
        else:
            out["k3_kl"] = sum(r["k3_tokens"] for r in summed) / total_tokens
        return out

    def _microbatch_loss(self, comps: list[Completion], mb: list[int], data: _Rollout, advantages: list[Tensor],
                         returns: list[Tensor] | None, kl_coef: float, *, tokens: float, sequences: int,
                         record: dict[str, float]) -> Tensor:
        """The micro-batch's share of its minibatch's loss (divided by the minibatch's tokens or sequences)."""
        cfg = self.trainer.cfg
        out = self._forward(comps)
        mask, width = out.mask, out.logps.shape[1]
        old = pad_rows([data.old_logps[i] for i in mb], width)
        num_tokens = float(mask.sum())
        if self.algorithm == "ppo":
            ppo = cfg.ppo
            assert ppo is not None and returns is not None and data.values is not None and out.values is not None
            policy_loss, stats = clipped_surrogate_loss(out.logps, old, pad_rows([advantages[i] for i in mb], width),
                                                        mask, ppo.clip_eps, normaliser=tokens)
            value_loss, value_clip = clipped_value_loss(out.values, pad_rows([data.values[i] for i in mb], width),
                                                        pad_rows([returns[i] for i in mb], width), mask,
                                                        ppo.clip_eps_value, normaliser=tokens)
            loss = policy_loss + ppo.vf_coef * value_loss
            record["policy_loss"] += float(policy_loss.detach())
            record["value_loss"] += float(value_loss.detach())
            record["value_clip_fraction_tokens"] += float(value_clip) * num_tokens
            approx_kl, clip_fraction, ratio = stats.approx_kl, stats.clip_fraction, stats.ratio_mean
        else:
            grpo = cfg.grpo
            assert grpo is not None
            reference = pad_rows([data.anchor_logps[i] for i in mb], width)
            loss, gstats = grpo_token_loss(
                out.logps, old, reference, torch.cat([advantages[i] for i in mb]).to(old.device), mask,
                grpo.clip_eps, kl_coef, length_normalise=grpo.length_normalise,
                normaliser=None if grpo.length_normalise else float(cfg.max_new_tokens), num_sequences=sequences)
            record["policy_loss"] += float(loss.detach())
            record["k3_tokens"] += float(gstats.kl) * num_tokens
            with torch.no_grad():
                log_ratio = torch.where(mask, out.logps.detach() - old, 0.0)
                approx_kl = (torch.expm1(log_ratio) - log_ratio).clamp(min=0.0)[mask].mean()
            clip_fraction, ratio = gstats.clip_fraction, gstats.ratio_mean
        record["tokens"] += num_tokens
        record["approx_kl_tokens"] += float(approx_kl) * num_tokens
        record["clip_fraction_tokens"] += float(clip_fraction) * num_tokens
        record["ratio_tokens"] += float(ratio) * num_tokens
        return loss
