"""The interface of an online objective's parts: per-token tensors in, per-token tensors out.

An online objective is built from five kinds of registered part, each a pure function of tensors with a
pydantic config of its own (the same idea as :mod:`alignkit.losses.base`, one registry per kind):

- an **advantage** estimator ``fn(inputs: AdvantageInputs, cfg) -> AdvantageOutput``: (B, T) per-token
  advantages from the rewards (and, for GAE, a value model);
- a **policy loss** ``fn(inputs: PolicyLossInputs, cfg) -> PolicyLossOutput``: (B, T) per-token losses from
  the log-probs now, the rollout's log-probs and the advantages (never reduced);
- a **loss aggregation** ``fn(per_token, mask, sizes, cfg) -> scalar``: how per-token losses become the
  minibatch's loss (divided by the minibatch's counts, so micro-batches and processes add up);
- a **KL estimator** ``fn(logps, ref_logps) -> (B, T)`` (k1, k2, k3): placed in the reward or in the loss;
- a **rollout correction** ``fn(trainer_logps, sampler_logps, mask, cfg) -> (B, T) weights``: importance
  weights for the gap between the sampler's log-probs and the trainer's.

Every (B, T) tensor covers completion tokens only, right-padded, with a bool ``mask``; padding positions
are ignored whatever they hold. The trainer never tests a part by name: it asks the spec what it needs
(``needs_values``) and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from alignkit.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CORRECTIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageInputs",
    "AdvantageOutput",
    "BatchSizes",
    "PartConfig",
    "PartSpec",
    "PolicyLossInputs",
    "PolicyLossOutput",
    "Reduce",
    "all_parts",
    "broadcast",
    "local_sum",
    "register_advantage",
    "register_aggregation",
    "register_correction",
    "register_kl_estimator",
    "register_policy_loss",
]

# Sums a list of floats over every process (the identity in one process): what a part needs of the batch
# beyond its own rows (a batch mean, whitening moments) goes through it, so 1 and N processes agree.
Reduce = Callable[[Sequence[float]], list[float]]


def local_sum(values: Sequence[float]) -> list[float]:
    """The :data:`Reduce` of a single process."""
    return [float(v) for v in values]


class PartConfig(BaseModel):
    """Base of every part's config: strict (unknown fields are errors, numbers finite) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class AdvantageInputs:
    """What an advantage estimator reads; B completions (prompt-major groups of ``group_size``).

    Attributes:
        rewards: (B,) the reward of each completion.
        scores: (B,) the reward minus ``kl_coef`` x its sequence KL (the KL in the reward), else the reward.
        token_kl: (B, T) the per-token KL estimate to the anchor (for estimators that place the KL penalty
            on each token, e.g. GAE).
        kl_coef: the weight of the KL in the reward (0 when it sits in the loss).
        mask: (B, T) bool, right-padded.
        group_size: k completions per prompt; groups are contiguous and never split across processes.
        values: (B, T) the value model's V_t at rollout time, or None (estimators with ``needs_values``).
        reduce: sums floats over every process (:data:`Reduce`).
    """

    rewards: Tensor
    scores: Tensor
    token_kl: Tensor
    kl_coef: float
    mask: Tensor
    group_size: int
    values: Tensor | None = None
    reduce: Reduce = local_sum


@dataclass
class AdvantageOutput:
    """(B, T) float32 advantages (0 at padding) and, for a value model, (B, T) value targets."""

    advantages: Tensor
    returns: Tensor | None = None


@dataclass
class PolicyLossInputs:
    """What a policy loss reads, (B, T) each.

    Attributes:
        logps: log pi of the sampled tokens now, with gradient.
        old_logps: log pi_old, the rollout policy's (detached).
        advantages: per-token advantages (detached).
        mask: bool, True at real tokens.
    """

    logps: Tensor
    old_logps: Tensor
    advantages: Tensor
    mask: Tensor


@dataclass
class PolicyLossOutput:
    """(B, T) per-token losses (0 at padding, not reduced) and where clipping was active.

    Attributes:
        per_token: the loss of each token, differentiable.
        clipped: bool, True where the clip (or cap) decided the token's term.
        ratio: the importance ratio each token's term used (detached), for logging.
    """

    per_token: Tensor
    clipped: Tensor
    ratio: Tensor


@dataclass(frozen=True)
class BatchSizes:
    """The counts of the whole minibatch a (micro-batch's) loss is divided by.

    Attributes:
        tokens: real tokens of the minibatch (every process's).
        sequences: completions of the minibatch.
        max_tokens: the length budget L (``online.max_new_tokens``).
    """

    tokens: float
    sequences: float
    max_tokens: float


@dataclass(frozen=True)
class PartSpec:
    """A registered part.

    Attributes:
        kind: "advantage", "policy loss", "loss aggregation", "KL estimator" or "rollout correction".
        name: the name recipes use.
        fn: the pure function.
        config: its pydantic config class (``config()`` gives the defaults).
        description: one line, for the reference page.
        needs_values: (advantage) reads a value model's V_t (the trainer then builds one and trains it).
        weight_bound: (policy loss) the largest factor, given its config, by which a token's gradient can
            exceed the plain policy gradient's ``|A|`` (per sign of A: (A > 0, A < 0)); None: unbounded.
    """

    kind: str
    name: str
    fn: Callable[..., Any]
    config: type[PartConfig]
    description: str
    needs_values: bool = False
    weight_bound: Callable[[Any], tuple[float, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def parse(self, settings: dict[str, Any] | PartConfig | None) -> PartConfig:
        """The config of ``settings`` (a mapping from a recipe, a config, or None for the defaults)."""
        if isinstance(settings, PartConfig):
            return settings
        return self.config.model_validate(settings or {})


ADVANTAGES: Registry[PartSpec] = Registry("advantage estimator")
POLICY_LOSSES: Registry[PartSpec] = Registry("policy loss")
AGGREGATIONS: Registry[PartSpec] = Registry("loss aggregation")
KL_ESTIMATORS: Registry[PartSpec] = Registry("KL estimator")
CORRECTIONS: Registry[PartSpec] = Registry("rollout correction")

F = TypeVar("F", bound=Callable[..., Any])


def _first_line(fn: Callable[..., Any], description: str | None) -> str:
    if description:
        return description
    lines = (fn.__doc__ or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _register(registry: Registry[PartSpec], kind: str, name: str, config: type[PartConfig],
              description: str | None, **extra: Any) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        registry.add(name, PartSpec(kind, name, fn, config, _first_line(fn, description), **extra))
        return fn

    return decorate


def register_advantage(name: str, *, config: type[PartConfig] = PartConfig, needs_values: bool = False,
                       min_group_size: int = 1, centred: Literal["group", "batch"] | None = None,
                       baseline_excludes_self: bool = False,
                       description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(inputs: AdvantageInputs, cfg) -> AdvantageOutput`` under ``name``.

    Example (a plugin file named in ``plugins:`` or passed with ``--plugin``)::

        @register_advantage("median_baseline")
        def median_baseline(inputs: AdvantageInputs, cfg: PartConfig) -> AdvantageOutput:
            grouped = inputs.scores.view(-1, inputs.group_size)
            a = (grouped - grouped.median(dim=1, keepdim=True).values).reshape(-1)
            return AdvantageOutput(broadcast(a, inputs.mask))

    What it promises, which the property suite checks on random inputs: ``min_group_size``, the samples per
    prompt it needs (a recipe with fewer is refused); ``centred``, its advantages sum to 0 over each group
    ("group") or over the batch ("batch"); ``baseline_excludes_self``, a sample's baseline (score minus
    advantage) does not move with the sample's own score.
    """
    return _register(ADVANTAGES, "advantage", name, config, description, needs_values=needs_values,
                     extra={"min_group_size": min_group_size, "centred": centred,
                            "baseline_excludes_self": baseline_excludes_self})


def register_policy_loss(name: str, *, config: type[PartConfig] = PartConfig,
                         weight_bound: Callable[[Any], tuple[float, float]] | None = None,
                         description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(inputs: PolicyLossInputs, cfg) -> PolicyLossOutput`` under ``name``.

    ``weight_bound(cfg) -> (bound for A > 0, bound for A < 0)`` states how far a token's gradient may
    exceed ``|A|`` (``inf`` where it is not bounded); the property suite checks it on random inputs.
    """
    return _register(POLICY_LOSSES, "policy loss", name, config, description, weight_bound=weight_bound)


def register_aggregation(name: str, *, config: type[PartConfig] = PartConfig,
                         description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(per_token, mask, sizes: BatchSizes, cfg) -> scalar`` under ``name``."""
    return _register(AGGREGATIONS, "loss aggregation", name, config, description)


def register_kl_estimator(name: str, *, sequence_form: bool = False,
                          description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(logps, ref_logps) -> (B, T)`` per-token KL estimates under ``name``.

    ``sequence_form``: the sum over a sequence's tokens equals ``fn`` of the sequences' summed log-probs
    (k1), which the trainer then uses for the sequence KL (the one it logs as ``kl_anchor``).
    """
    return _register(KL_ESTIMATORS, "KL estimator", name, PartConfig, description,
                     extra={"sequence_form": sequence_form})


def register_correction(name: str, *, config: type[PartConfig] = PartConfig,
                        description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(trainer_logps, sampler_logps, mask, cfg) -> (B, T) weights`` under ``name``."""
    return _register(CORRECTIONS, "rollout correction", name, config, description)


def all_parts() -> dict[str, list[PartSpec]]:
    """Every registered part by kind (built-ins and loaded plugins), each sorted by name."""
    return {r.kind: [r.get(n) for n in r.names()]
            for r in (ADVANTAGES, POLICY_LOSSES, AGGREGATIONS, KL_ESTIMATORS, CORRECTIONS)}


def broadcast(sequence_values: Tensor, mask: Tensor) -> Tensor:
    """(B,) -> (B, T) float32: each sequence's value on its real tokens, 0 at padding."""
    values = sequence_values.detach().float().to(mask.device).unsqueeze(1).expand(mask.shape)
    return torch.where(mask, values, torch.zeros_like(values))

