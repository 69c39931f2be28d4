"""The loss interface: per-sequence statistics in, per-example losses out.

A loss is a pure function ``fn(stats: PreferenceStats, cfg: Config) -> LossOutput`` registered with
:func:`register_loss`. It never reduces over the batch, never scales for gradient accumulation and never
logs: the trainer does that, the same way for every loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar, cast, overload

import torch
from pydantic import BaseModel, ConfigDict

from alignkit.registry import Registry

__all__ = [
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "PreferenceStats",
    "get_loss",
    "list_losses",
    "register_loss",
    "LOSSES",
]

# What a loss reads from the model. The trainer computes only what the loss declares.
#   "logps":  policy log-probs of chosen/rejected responses (a causal LM)
#   "scores": one scalar reward per chosen/rejected sequence (a reward model)
#   "kway":   K scalar rewards per example and the index of the best (a K-way reward model)
LossInputs = Literal["logps", "scores", "kway"]


class LossConfig(BaseModel):
    """Base of every loss config: strict (unknown fields are errors, numbers finite) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass
class PreferenceStats:
    """Per-sequence statistics of one batch of B examples. Every tensor has shape (B,) unless noted.

    Attributes:
        policy_chosen_logps: sum of the policy's log-probs over the chosen response tokens.
        policy_rejected_logps: the same for the rejected response.
        chosen_lengths: number of chosen response tokens (float, >= 1).
        rejected_lengths: number of rejected response tokens.
        reference_chosen_logps: the reference model's summed log-probs; None unless the loss
            declares ``needs_reference``.
        reference_rejected_logps: the same for the rejected response.
        chosen_scores: reward-model score of the chosen sequence (``inputs="scores"``).
        rejected_scores: reward-model score of the rejected sequence.
        scores: (B, K) reward-model scores of K candidates (``inputs="kway"``).
        best_index: (B,) long, index of the preferred candidate in ``scores``.
    """

    policy_chosen_logps: torch.Tensor | None = None
    policy_rejected_logps: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None
    chosen_scores: torch.Tensor | None = None
    rejected_scores: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    best_index: torch.Tensor | None = None

    def to_fp32(self) -> PreferenceStats:
        """A copy with every floating tensor in float32 (losses are computed in fp32 under bf16/fp16)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.float()
            out[f.name] = value
        return PreferenceStats(**out)

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
        raise ValueError("PreferenceStats holds no tensors")


@dataclass
class LossOutput:
    """What a loss returns, per example.

    Attributes:
        losses: (B,) per-example loss, differentiable.
        chosen_rewards: (B,) detached implicit (or explicit) reward of the chosen response.
        rejected_rewards: (B,) detached reward of the rejected response.
        metrics: extra per-example (B,) detached tensors, logged as their batch mean.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


LossFn = Callable[[PreferenceStats, LossConfig], LossOutput]
ConfigT = TypeVar("ConfigT", bound=LossConfig)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: the name recipes use.
        fn: the pure loss function.
        config: its pydantic config class (``config()`` gives the defaults).
        needs_reference: whether ``fn`` reads reference log-probs.
        inputs: what the model must produce ("logps", "scores" or "kway").
        description: one line for ``alignkit losses`` and docs/losses.md.
    """

    name: str
    fn: LossFn
    config: type[LossConfig]
    needs_reference: bool
    inputs: LossInputs
    description: str

    def __call__(self, stats: PreferenceStats, cfg: LossConfig | None = None) -> LossOutput:
        return self.fn(stats.to_fp32(), cfg if cfg is not None else self.config())


LOSSES: Registry[LossSpec] = Registry("loss")


@overload
def register_loss(
    name: str,
    *,
    config: type[ConfigT],
    needs_reference: bool = False,
    inputs: LossInputs = "logps",
    description: str | None = None,
) -> Callable[[Callable[[PreferenceStats, ConfigT], LossOutput]], Callable[[PreferenceStats, ConfigT], LossOutput]]: ...


@overload
def register_loss(
    name: str,
    *,
    needs_reference: bool = False,
    inputs: LossInputs = "logps",
    description: str | None = None,
) -> Callable[[LossFn], LossFn]: ...


def register_loss(
    name: str,
    *,
    config: type[ConfigT] | type[LossConfig] = LossConfig,
    needs_reference: bool = False,
    inputs: LossInputs = "logps",
    description: str | None = None,
) -> Callable[[Callable[[PreferenceStats, ConfigT], LossOutput]], Callable[[PreferenceStats, ConfigT], LossOutput]]:
    """Register a loss function under ``name``.

    Example::

        class MyConfig(LossConfig):
            beta: float = Field(0.1, gt=0, description="inverse temperature")

        @register_loss("my_loss", config=MyConfig, needs_reference=True)
        def my_loss(stats: PreferenceStats, cfg: MyConfig) -> LossOutput: ...

    The description defaults to the first line of the function's docstring.
    """

    def decorate(
        fn: Callable[[PreferenceStats, ConfigT], LossOutput],
    ) -> Callable[[PreferenceStats, ConfigT], LossOutput]:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0:1]
        line = doc if isinstance(doc, str) else (doc[0] if doc else "")
        # cast: the spec forgets which config class `fn` takes; recipes and build_objective validate a loss's
        # settings into the `config` registered beside it, so that is what `fn` is called with.
        LOSSES.add(name, LossSpec(name, cast(LossFn, fn), config, needs_reference, inputs, line.strip()))
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """The registered entry for ``name`` (raises with the list of known names when unknown)."""
    return LOSSES.get(name)


def list_losses() -> list[LossSpec]:
    """Every registered loss, sorted by name (built-ins and loaded plugins)."""
    return [LOSSES.get(n) for n in LOSSES.names()]
