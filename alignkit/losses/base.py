"""The loss interface: per-sequence statistics in, per-example losses out.

A loss is a pure function ``fn(stats: PreferenceStats, cfg: Config) -> LossOutput`` registered with
:func:`register_loss`. It never reduces over the batch, never scales for gradient accumulation and never
logs: the trainer does that, the same way for every loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from pydantic import BaseModel, ConfigDict

from alignkit.lazy import lazy_module
from alignkit.losses.batch_kinds import LOGPS, BatchKind, batch_kind
from alignkit.losses.stats import PreferenceStats
from alignkit.registry import Registry

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = [
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "LossState",
    "PreferenceStats",
    "get_loss",
    "list_losses",
    "losses_reading",
    "register_loss",
    "LOSSES",
]

class LossConfig(BaseModel):
    """Base of every loss config: strict (unknown fields are errors, numbers finite) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def label_balance_warnings(self, n_desirable: int, n_undesirable: int) -> list[str]:
        """Warnings about these settings for unpaired data with this many examples of each label.

        None by default; a loss whose parameters should follow the data's imbalance (KTO's λ_D, λ_U)
        says so here, and the run prints it once the data is prepared.
        """
        return []


@dataclass
class LossOutput:
    """What a loss returns, per example.

    Attributes:
        losses: (B,) per-example loss, differentiable.
        chosen_rewards: (B,) detached implicit (or explicit) reward of the chosen response.
        rejected_rewards: (B,) detached reward of the rejected response.
        metrics: extra per-example (B,) detached tensors, logged as their batch mean.

    An unpaired example has one response: its reward sits in ``chosen_rewards`` when it is desirable and
    in ``rejected_rewards`` when it is not, with 0 in the other.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class LossState(ABC):
    """Running values a loss keeps across optimizer steps (BCO's reward shift δ), kept in checkpoints.

    The trainer makes one per run (the ``state`` class given to :func:`register_loss`) and hands it to the
    loss with every batch. After each optimizer step it updates it with :meth:`totals` of the step's
    training micro-batches, summed over micro-batches and processes, so every process holds the same
    value. Held-out batches read it and never change it. A loss called without a state gets a fresh one.
    """

    @abstractmethod
    def totals(self, stats: PreferenceStats, cfg: Any) -> torch.Tensor:
        """(n,) detached sums over this batch that :meth:`update` reads (they add across batches)."""

    @abstractmethod
    def update(self, totals: torch.Tensor) -> None:
        """Take in one optimizer step's summed :meth:`totals`."""

    @abstractmethod
    def to_json(self) -> dict[str, float]:
        """The state as JSON numbers (for the checkpoint)."""

    @abstractmethod
    def load_json(self, data: dict[str, float]) -> None:
        """Restore what :meth:`to_json` gave."""


LossFn = Callable[..., LossOutput]  # (stats, cfg) -> output; (stats, cfg, state) for a loss with a state
ConfigT = TypeVar("ConfigT", bound=LossConfig)
StateT = TypeVar("StateT", bound=LossState)
# Whether a loss reads reference log-probs given its config, for a loss where a parameter decides it
# (``dpo`` with ``reference_free: true`` reads none).
ReferenceRule = Callable[[LossConfig], bool]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: the name recipes use.
        fn: the pure loss function.
        config: its pydantic config class (``config()`` gives the defaults).
        needs_reference: whether ``fn`` reads reference log-probs with the default config; with a
            given config ask :meth:`reads_reference`.
        inputs: the batch kind the loss reads (:mod:`alignkit.losses.batch_kinds`: what the model must produce).
        description: one line for ``alignkit losses`` and docs/losses.md.
        reference_rule: decides the need from a config, for a loss whose parameters decide it; None
            when ``needs_reference`` holds for every config.
        needs_mismatched: (unpaired) ``fn`` reads the log-probs of mismatched prompt–completion pairs.
        state: the :class:`LossState` class of a loss that keeps running values; None for a pure one.
    """

    name: str
    fn: LossFn
    config: type[LossConfig]
    needs_reference: bool
    inputs: BatchKind
    description: str
    reference_rule: ReferenceRule | None = None
    needs_mismatched: bool = False
    state: type[LossState] | None = None

    def reads_reference(self, cfg: LossConfig | None = None) -> bool:
        """Whether ``fn`` called with ``cfg`` (the defaults when None) reads reference log-probs."""
        if self.reference_rule is None:
            return self.needs_reference
        return self.reference_rule(cfg if cfg is not None else self.config())

    def __call__(
        self, stats: PreferenceStats, cfg: LossConfig | None = None, state: LossState | None = None
    ) -> LossOutput:
        cfg = cfg if cfg is not None else self.config()
        if self.state is None:
            return self.fn(stats.to_fp32(), cfg)
        return self.fn(stats.to_fp32(), cfg, state if state is not None else self.state())


LOSSES: Registry[LossSpec] = Registry("loss")


@overload
def register_loss(
    name: str,
    *,
    config: type[ConfigT],
    needs_reference: bool | Callable[[ConfigT], bool] = False,
    inputs: BatchKind | str = LOGPS,
    description: str | None = None,
    needs_mismatched: bool = False,
    state: type[StateT],
) -> Callable[
    [Callable[[PreferenceStats, ConfigT, StateT], LossOutput]],
    Callable[[PreferenceStats, ConfigT, StateT], LossOutput],
]: ...


@overload
def register_loss(
    name: str,
    *,
    config: type[ConfigT],
    needs_reference: bool | Callable[[ConfigT], bool] = False,
    inputs: BatchKind | str = LOGPS,
    description: str | None = None,
    needs_mismatched: bool = False,
) -> Callable[[Callable[[PreferenceStats, ConfigT], LossOutput]], Callable[[PreferenceStats, ConfigT], LossOutput]]: ...


@overload
def register_loss(
    name: str,
    *,
    needs_reference: bool = False,
    inputs: BatchKind | str = LOGPS,
    description: str | None = None,
) -> Callable[[LossFn], LossFn]: ...


def register_loss(
    name: str,
    *,
    config: type[ConfigT] | type[LossConfig] = LossConfig,
    needs_reference: bool | Callable[[ConfigT], bool] = False,
    inputs: BatchKind | str = LOGPS,
    description: str | None = None,
    needs_mismatched: bool = False,
    state: type[LossState] | None = None,
) -> Callable[[Callable[..., LossOutput]], Callable[..., LossOutput]]:
    """Register a loss function under ``name``.

    Example::

        class MyConfig(LossConfig):
            beta: float = Field(0.1, gt=0, description="inverse temperature")

        @register_loss("my_loss", config=MyConfig, needs_reference=True)
        def my_loss(stats: PreferenceStats, cfg: MyConfig) -> LossOutput: ...

    The description defaults to the first line of the function's docstring. When a parameter decides
    whether the reference is read, pass a function of the config instead of a bool, e.g.
    ``needs_reference=lambda cfg: not cfg.reference_free``: recipe validation and the trainer then ask
    it with the recipe's config.

    ``inputs`` is the batch kind the loss reads (``LOGPS`` by default; ``SCORES``, ``KWAY``, ``UNPAIRED`` or
    a kind's name). An unpaired loss (``inputs=UNPAIRED``) may also read mismatched prompt–completion pairs
    (``needs_mismatched=True``, KTO's reference point). A loss that keeps running values across steps
    names its :class:`LossState` class (``state=``) and takes the state as a third argument.
    """

    kind = batch_kind(inputs)

    def decorate(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0:1]
        line = doc if isinstance(doc, str) else (doc[0] if doc else "")
        # cast: the spec forgets which config class `fn` (and the reference rule) takes; recipes and
        # build_objective validate a loss's settings into the `config` registered beside it, so that is
        # what both are called with.
        rule = cast(ReferenceRule, needs_reference) if callable(needs_reference) else None
        default_needs = rule(config()) if rule is not None else bool(needs_reference)
        LOSSES.add(name, LossSpec(name, fn, config, default_needs, kind, line.strip(), rule,
                                  needs_mismatched=needs_mismatched, state=state))
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """The registered entry for ``name`` (raises with the list of known names when unknown)."""
    return LOSSES.get(name)


def list_losses() -> list[LossSpec]:
    """Every registered loss, sorted by name (built-ins and loaded plugins)."""
    return [LOSSES.get(n) for n in LOSSES.names()]


def losses_reading(kind: BatchKind) -> list[LossSpec]:
    """Every registered loss that reads batches of ``kind``, sorted by name."""
    return [spec for spec in list_losses() if spec.inputs is kind]
