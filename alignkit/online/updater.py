"""The update of every online objective: per-token forwards, the registered parts, one or more optimizer steps.

The rollout, the reward, the KL anchor, beta and its controller, the batch sums and the logged sample metrics,
checkpoints, resume and data parallelism are :class:`~alignkit.online.trainer.OnlineTrainer`'s; this module is
what happens after the rollout, the same for every objective (the objective's math is its registered parts,
:mod:`alignkit.online.parts`, resolved into an :class:`~alignkit.online.objective.Objective`):

1. **Plan.** The step's N completions (every process's, in the global order: rank-major, prompt-major) are
   cut into minibatches for every pass: ``epochs`` passes of ``N / minibatch_size`` minibatches, each pass a
   fresh permutation seeded from (seed, step, pass) (the identity when one minibatch holds the whole rollout).
   Each minibatch is one optimizer step. A process takes the completions of each minibatch that it sampled
   (an uneven or empty share is fine: the aggregation divides by the whole minibatch's counts, and gradients
   are summed over processes), in ``online.update_batch_size`` micro-batches. The plan depends on the seed and
   the step only, so 1 and N processes take the same optimizer steps.
2. **Rollout pass** (no gradient), in exactly the micro-batches of the first pass: the policy's per-token
   log-probs (the "old" policy of every ratio), its entropies and (with a value model) values, then the
   anchor's log-probs and, with an EMA anchor, the initial model's. The first optimizer step's forwards see
   the same rows in the same batches, so its ratio is exactly 1. The sampler's log-probs (kept by the
   rollout) against these give the logged mismatch and the rollout correction's weights.
3. **Advantages.** The per-token KL estimate to the anchor; the scores (the reward, minus the KL weight x the
   sequence KL when the KL sits in the reward); the advantage estimator (sums over processes through
   ``reduce``).
4. **Updates.** For every minibatch and micro-batch: the policy loss per token, times the rollout
   correction, plus the KL term (when in the loss) and minus the entropy bonus, aggregated; plus ``vf_coef``
   x the clipped value loss with a value model; backward, gradients and a non-finite flag all-reduced, one
   :func:`~alignkit.train.loop.optimizer_step` (clipping, the schedule, the divergence guard).

The statistics of every optimizer step (losses, approx-KL, clip fractions, ratio, k3 to the anchor) are
summed over processes once at the end of the step and kept in :attr:`Updater.records`; the logged metrics
are their means over the step's optimizer steps (token-weighted for per-token statistics).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from alignkit.models.generate import Completion, eval_mode
from alignkit.models.kl import ReferenceFn
from alignkit.models.kl_estimators import kl_estimate
from alignkit.models.logps import LogpsOptions
from alignkit.models.padding import pad_rows
from alignkit.online.anchor import FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.flops import UpdateFlops
from alignkit.online.kl_control import KLController
from alignkit.online.objective import Objective
from alignkit.online.parallel import gather_sequences
from alignkit.online.parts import AdvantageInputs, BatchSizes, PolicyLossInputs
from alignkit.online.parts.kl import k3
from alignkit.online.ppo import clipped_value_loss, masked_mean
from alignkit.online.rloo import penalised_rewards, sequence_kl_estimate
from alignkit.online.rollout import BatchSums, Rollout
from alignkit.online.tokens import TokenOutputs, ValueHead, ValueModel, token_forward, value_forward
from alignkit.timing import phase
from alignkit.train.distributed import DistEnv, all_reduce_flags, all_reduce_gradients
from alignkit.train.divergence import DivergenceGuard
from alignkit.train.loop import optimizer_step

__all__ = ["TrainerParts", "Updater", "local_microbatches", "update_plan", "updates_per_step"]


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
        ValueError: a minibatch size that does not divide the rollout, naming ``online.minibatch_size``.
    """
    size = minibatch_size or num_samples
    if size > num_samples or num_samples % size:
        raise ValueError(f"online.minibatch_size={size} must divide the {num_samples} completions of a step "
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
    sampler_logps: list[Tensor]
    anchor_logps: list[Tensor]
    initial_logps: list[Tensor] | None
    values: list[Tensor] | None
    entropy: float  # sum over this process's tokens


@dataclass(frozen=True)
class _Weights:
    """The KL weight in the reward and in the loss this step (one of them 0, or both with placement none)."""

    in_reward: float
    in_loss: float


class Updater:
    """The part of a step after the rollout (see the module docstring), for every objective.

    Attributes:
        objective: the resolved parts.
        value: the value head or model (advantages with ``needs_values``), else None; its trainable tensors
            are in ``trainer.params``.
        records: the statistics of every optimizer step so far, with their ``step`` and ``update``.
    """

    def __init__(self, trainer: TrainerParts, value: ValueHead | ValueModel | None) -> None:
        self.trainer, self.value = trainer, value
        self.objective = Objective.of(trainer.cfg)
        self.minibatch_size, self.passes = self.objective.minibatch_size, self.objective.epochs
        self.num_samples = trainer.train_cfg.prompts_per_step * trainer.cfg.samples_per_prompt
        self.updates = updates_per_step(self.num_samples, self.minibatch_size, self.passes)
        self.records: list[dict[str, float]] = []

    def _weights(self) -> _Weights:
        kl = self.objective.kl
        weight = kl.coef if kl.coef is not None else self.trainer.controller.beta
        return _Weights(weight if kl.placement == "reward" else 0.0, weight if kl.placement == "loss" else 0.0)

    # -----------------------------------------------------------------------------------------------------
    def step(self, step: int, roll: Rollout) -> dict[str, float]:
        """Everything of a step after the rollout: metrics of the step (over every process)."""
        t, cfg, obj = self.trainer, self.trainer.cfg, self.objective
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
        weights = self._weights()
        old, anchor = pad_rows(data.old_logps), pad_rows(data.anchor_logps)
        lengths_here = torch.tensor([c.num_tokens for c in comps], device=old.device)
        mask = torch.arange(old.shape[1], device=old.device).unsqueeze(0) < lengths_here.unsqueeze(1)
        token_kl = torch.where(mask, obj.kl_estimator.fn(old, anchor), 0.0)
        # An estimator linear in the log-probs (k1) sums to the logged sequence KL exactly; else sum its tokens.
        sequence_kl = kl_anchor if obj.kl_estimator.extra["sequence_form"] else token_kl.sum(dim=1).cpu()
        scores = penalised_rewards(roll.rewards, sequence_kl, weights.in_reward)
        batch = t.batch_sums(roll, policy_logps, kl_anchor, kl_initial, scores)
        t.guard.check("reward", batch.reward, step + 1, before="the update",
                      hint="The reward function must return finite numbers.")

        values = pad_rows(data.values) if data.values is not None else None
        inputs = AdvantageInputs(rewards=roll.rewards.float(), scores=scores, token_kl=token_kl,
                                 kl_coef=weights.in_reward, mask=mask, group_size=cfg.samples_per_prompt,
                                 values=values, reduce=lambda v: all_reduce_flags(list(v), t.env))
        out = obj.advantage.spec.fn(inputs, obj.advantage.cfg)
        split = [c.num_tokens for c in comps]
        advantages = [out.advantages[i, :n] for i, n in enumerate(split)]
        returns = [out.returns[i, :n] for i, n in enumerate(split)] if out.returns is not None else None
        extra = self._rollout_metrics(data, mask, out.returns, values)
        self._check_sampler(roll, extra["sampler_logp_abs_diff"], step)

        update = self._update(step, plan, comps, lengths, data, advantages, returns, weights.in_loss)
        t.anchor.update()
        t.controller.update(batch.mean("kl_anchor"))
        beta = weights.in_loss if obj.kl.placement == "loss" else weights.in_reward
        metrics = t.sample_metrics(batch, ids, beta=beta)
        return {**metrics, **extra, **update}

    def _check_sampler(self, roll: Rollout, mismatch: float, step: int) -> None:
        """Refuse, before the update, samples of the current weights whose log-probs the trainer does not
        reproduce (``online.rollout.max_logp_mismatch``): they come from another policy."""
        limit = self.trainer.cfg.rollout.max_logp_mismatch
        if limit is not None and roll.staleness == 0 and not mismatch <= limit:
            raise ValueError(f"online.rollout.max_logp_mismatch: step {step + 1}'s samples have a mean |log pi_trainer "
                             f"- log pi_sampler| of {mismatch:.3g} per token, above {limit:g}: the sampler did not use "
                             "the trained weights; nothing was trained on them")

    def _rollout_metrics(self, data: _Rollout, mask: Tensor, returns: Tensor | None,
                         values: Tensor | None) -> dict[str, float]:
        """Token entropy, the sampler/trainer mismatch and (with a value model) the value statistics, in one
        all-reduce."""
        old, sampler = pad_rows(data.old_logps), pad_rows(data.sampler_logps)
        delta = torch.where(mask, old.double() - sampler.double(), 0.0)  # log pi_trainer - log pi_sampler
        # k3 of KL(sampler || trainer), in float64: the mismatch is ~1e-11 nats when both compute in fp32
        mismatch_kl = torch.where(mask, kl_estimate(sampler.double(), old.double(), "k3"), 0.0)
        local = [data.entropy, float(mask.sum()), float(delta.abs().sum()), float(mismatch_kl.sum())]
        if returns is not None:
            assert values is not None
            g = torch.where(mask, returns.double(), 0.0)
            residual = torch.where(mask, (returns - values).double(), 0.0)
            local += [float(g.sum()), float((g * g).sum()), float(residual.sum()), float((residual * residual).sum())]
        sums = all_reduce_flags(local, self.trainer.env)
        entropy, count, abs_delta, kl = sums[:4]
        extra = {"token_entropy": entropy / max(count, 1.0), "sampler_logp_abs_diff": abs_delta / max(count, 1.0),
                 "sampler_kl": kl / max(count, 1.0)}
        if returns is not None:
            g_sum, g_sq, r_sum, r_sq = sums[4:]
            var_g = g_sq / count - (g_sum / count) ** 2
            var_r = r_sq / count - (r_sum / count) ** 2
            # Undefined when the returns do not vary beyond float32 rounding (a constant reward with lam = 1):
            # NaN here, null in metrics.jsonl (alignkit.jsonio), rather than a ratio of rounding noise.
            varies = var_g > (1e-6 * max(1.0, abs(g_sum / count))) ** 2
            extra.update({
                "explained_variance": 1.0 - var_r / var_g if varies else math.nan,
                "value_mean": g_sum / count - r_sum / count,  # mean rollout value: mean(G) - mean(G - V)
                "return_mean": g_sum / count,
            })
        return extra

    # -----------------------------------------------------------------------------------------------------
    def _forward(self, comps: Sequence[Completion], *, entropy: bool = False,
                 entropy_grad: bool = False) -> TokenOutputs:
        t = self.trainer
        head = self.value if isinstance(self.value, ValueHead) else None
        out = token_forward(t.policy, comps, t.pad_id, chunk_size=t.logps.chunk_size, value_head=head,
                            entropy=entropy, entropy_grad=entropy_grad, temperature=t.cfg.temperature)
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
        # The sampler's log-probs where the rollout kept them; else the trainer's own (no mismatch).
        sampler = [old[i] if c.sampler_logps is None else
                   torch.tensor(c.sampler_logps, dtype=old[i].dtype, device=old[i].device)
                   for i, c in enumerate(comps)]
        anchor = self._reference_logps(t.anchor.model_context, comps, microbatches)
        initial = self._reference_logps(t.initial, comps, microbatches) if t.initial is not None else None
        return _Rollout(old, sampler, anchor, initial, values, entropy)

    def _reference_logps(self, context, comps: list[Completion], microbatches: list[list[int]]) -> list[Tensor]:
        t = self.trainer
        out: list[Tensor] = [torch.empty(0)] * len(comps)
        with phase("reference log-probs"), context() as model, eval_mode(model):
            for mb in microbatches:
                logps = token_forward(model, [comps[i] for i in mb], t.pad_id, chunk_size=t.logps.chunk_size,
                                      temperature=t.cfg.temperature).logps
                t.flops.count_forward([comps[i] for i in mb])
                for row, i in enumerate(mb):
                    out[i] = logps[row, :comps[i].num_tokens]
        return out

    # -----------------------------------------------------------------------------------------------------
    def _update(self, step: int, plan: list[list[int]], comps: list[Completion], lengths: list[int],
                data: _Rollout, advantages: list[Tensor], returns: list[Tensor] | None,
                kl_in_loss: float) -> dict[str, float]:
        """Every optimizer step of the plan; the means of their statistics (over every process)."""
        t = self.trainer
        offset, micro = t.env.rank * len(comps), t.cfg.update_batch_size
        value = self.value if self.value is not None else nn.Identity()
        local_records, grad_norms, rates = [], [], []
        for indices in plan:
            sizes = BatchSizes(tokens=float(sum(lengths[g] for g in indices)), sequences=float(len(indices)),
                               max_tokens=float(t.cfg.max_new_tokens))
            record = dict.fromkeys(RECORD_KEYS, 0.0)
            non_finite = 0
            # The offline trainer's phases (alignkit.timing): where each optimizer step's time goes.
            with phase("forward/backward"), eval_mode(t.policy), eval_mode(value):
                for mb in local_microbatches(indices, offset, len(comps), micro):
                    loss = self._microbatch_loss([comps[i] for i in mb], mb, data, advantages, returns, kl_in_loss,
                                                 sizes=sizes, record=record)
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
        return self._summarise(step, local_records, grad_norms, rates)

    def _summarise(self, step: int, local_records: list[list[float]], grad_norms: list[float],
                   rates: list[float]) -> dict[str, float]:
        """Sum every optimizer step's records over processes (one all-reduce), keep them, return their means."""
        flat = all_reduce_flags([v for r in local_records for v in r], self.trainer.env)
        width = len(RECORD_KEYS)
        summed = [dict(zip(RECORD_KEYS, flat[u * width:(u + 1) * width], strict=True))
                  for u in range(len(local_records))]
        with_value = self.value is not None
        for u, r in enumerate(summed):
            tok = max(r["tokens"], 1.0)
            record = {"step": step + 1, "update": u + 1, "loss": r["loss"], "policy_loss": r["policy_loss"],
                      "approx_kl": r["approx_kl_tokens"] / tok, "clip_fraction": r["clip_fraction_tokens"] / tok,
                      "ratio_mean": r["ratio_tokens"] / tok, "k3_kl": r["k3_tokens"] / tok,
                      "grad_norm": grad_norms[u], "learning_rate": rates[u]}
            if with_value:
                record.update(value_loss=r["value_loss"], value_clip_fraction=r["value_clip_fraction_tokens"] / tok)
            self.records.append(record)
        total_tokens = max(sum(r["tokens"] for r in summed), 1.0)
        mean = len(summed)
        out = {
            "loss": sum(r["loss"] for r in summed) / mean,
            "policy_loss": sum(r["policy_loss"] for r in summed) / mean,
            "approx_kl": sum(r["approx_kl_tokens"] for r in summed) / total_tokens,
            "clip_fraction": sum(r["clip_fraction_tokens"] for r in summed) / total_tokens,
            "ratio_mean": sum(r["ratio_tokens"] for r in summed) / total_tokens,
            "k3_kl": sum(r["k3_tokens"] for r in summed) / total_tokens,
            "grad_norm": sum(grad_norms) / mean,
            "learning_rate": rates[0],
            "optimizer_steps": float(mean),
        }
        if with_value:
            out["value_loss"] = sum(r["value_loss"] for r in summed) / mean
            out["value_clip_fraction"] = sum(r["value_clip_fraction_tokens"] for r in summed) / total_tokens
        return out

    def _microbatch_loss(self, comps: list[Completion], mb: list[int], data: _Rollout, advantages: list[Tensor],
                         returns: list[Tensor] | None, kl_in_loss: float, *, sizes: BatchSizes,
                         record: dict[str, float]) -> Tensor:
        """The micro-batch's share of its minibatch's loss (the aggregation divides by the minibatch's counts)."""
        obj = self.objective
        out = self._forward(comps, entropy_grad=obj.entropy_coef > 0)
        mask, width = out.mask, out.logps.shape[1]
        old = pad_rows([data.old_logps[i] for i in mb], width)
        adv = pad_rows([advantages[i] for i in mb], width)
        num_tokens = float(mask.sum())
        policy = obj.policy_loss.spec.fn(PolicyLossInputs(out.logps, old, adv, mask), obj.policy_loss.cfg)
        sampler = pad_rows([data.sampler_logps[i] for i in mb], width)
        per_token = policy.per_token * obj.correction.spec.fn(old, sampler, mask, obj.correction.cfg)
        zeros = torch.zeros_like(out.logps)
        logp = torch.where(mask, out.logps, zeros)
        reference = torch.where(mask, pad_rows([data.anchor_logps[i] for i in mb], width), zeros)
        if kl_in_loss > 0:
            kl = obj.kl_estimator.fn(logp, reference)
            if obj.kl.importance_weighted:
                kl = kl * torch.exp(torch.where(mask, out.logps.detach() - old, zeros))
            per_token = per_token + kl_in_loss * kl
        if obj.entropy_coef > 0:
            assert out.entropy is not None
            per_token = per_token - obj.entropy_coef * torch.where(mask, out.entropy, zeros)
        loss = obj.aggregation.spec.fn(per_token, mask, sizes, obj.aggregation.cfg)
        record["policy_loss"] += float(loss.detach())
        if returns is not None:
            value_cfg = obj.value
            assert value_cfg is not None and data.values is not None and out.values is not None
            value_loss, value_clip = clipped_value_loss(out.values, pad_rows([data.values[i] for i in mb], width),
                                                        pad_rows([returns[i] for i in mb], width), mask,
                                                        value_cfg.clip_eps_value, normaliser=sizes.tokens)
            loss = loss + value_cfg.vf_coef * value_loss
            record["value_loss"] += float(value_loss.detach())
            record["value_clip_fraction_tokens"] += float(value_clip) * num_tokens
        with torch.no_grad():
            # k3 of KL(pi_old || pi) on the tokens pi_old sampled: (rho - 1) - log rho
            approx_kl = masked_mean(kl_estimate(torch.where(mask, old, zeros),
                                                torch.where(mask, out.logps.detach(), zeros), "k3"), mask)
            k3_anchor = masked_mean(k3(logp.detach(), reference), mask)
            record["tokens"] += num_tokens
            record["approx_kl_tokens"] += float(approx_kl) * num_tokens
            record["clip_fraction_tokens"] += float(masked_mean(policy.clipped.float(), mask)) * num_tokens
            record["ratio_tokens"] += float(masked_mean(policy.ratio, mask)) * num_tokens
            record["k3_tokens"] += float(k3_anchor) * num_tokens
        return loss
