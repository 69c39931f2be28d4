"""The resolved online objective: the registered parts (and their configs) an :class:`OnlineConfig` names.

:class:`~alignkit.online.config.OnlineConfig` has already expanded its preset and validated every part; this is
what the updater calls, and what a run prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.online.config import KLConfig, OnlineConfig, PartChoice, ValueConfig
from alignkit.online.parts import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PartSpec,
)
from alignkit.online.parts.base import PartConfig
from alignkit.registry import Registry

__all__ = ["BoundPart", "Objective"]


@dataclass(frozen=True)
class BoundPart:
    """A registered part with its validated config."""

    spec: PartSpec
    cfg: PartConfig

    @classmethod
    def of(cls, registry: Registry[PartSpec], choice: PartChoice | None) -> BoundPart:
        assert choice is not None  # OnlineConfig fills every part in
        spec = registry.get(choice.name)
        return cls(spec, spec.parse(choice.settings))

    def describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.cfg.model_dump().items())
        return f"{self.spec.name}({settings})" if settings else self.spec.name


@dataclass(frozen=True)
class Objective:
    """Every part of one online objective, and how often it steps per rollout.

    Attributes:
        advantage, policy_loss, aggregation, correction: the bound parts.
        kl: the KL settings; ``kl_estimator`` its registered estimator.
        entropy_coef: weight of the entropy bonus.
        epochs: passes over each rollout; ``minibatch_size``: completions per optimizer step (None: all).
        value: the value model's settings when the advantage needs one, else None.
    """

    advantage: BoundPart
    policy_loss: BoundPart
    aggregation: BoundPart
    correction: BoundPart
    kl: KLConfig
    kl_estimator: PartSpec
    entropy_coef: float
    epochs: int
    minibatch_size: int | None
    value: ValueConfig | None

    @classmethod
    def of(cls, cfg: OnlineConfig) -> Objective:
        """The objective of a validated :class:`OnlineConfig`."""
        assert cfg.kl is not None and cfg.epochs is not None
        advantage = BoundPart.of(ADVANTAGES, cfg.advantage)
        return cls(
            advantage=advantage,
            policy_loss=BoundPart.of(POLICY_LOSSES, cfg.policy_loss),
            aggregation=BoundPart.of(AGGREGATIONS, cfg.loss_aggregation),
            correction=BoundPart.of(CORRECTIONS, cfg.rollout_correction),
            kl=cfg.kl, kl_estimator=KL_ESTIMATORS.get(cfg.kl.estimator), entropy_coef=cfg.entropy_coef,
            epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
            value=cfg.value if advantage.spec.needs_values else None,
        )

    def describe(self) -> list[str]:
        """One line per part, as a run prints them."""
        kl = self.kl
        coef = "online.beta" if kl.coef is None else f"{kl.coef:g}"
        weighted = ", importance weighted" if kl.importance_weighted else ""
        lines = [
            f"advantage:          {self.advantage.describe()}",
            f"policy loss:        {self.policy_loss.describe()}",
            f"loss aggregation:   {self.aggregation.describe()}",
            f"KL:                 {kl.estimator} in the {kl.placement} (weight {coef}{weighted})"
            if kl.placement != "none" else "KL:                 none",
            f"entropy bonus:      {self.entropy_coef:g}",
            f"rollout correction: {self.correction.describe()}",
            f"updates:            {self.epochs} pass(es), minibatch {self.minibatch_size or 'the whole rollout'}",
        ]
        if self.value is not None:
            v = self.value
            lines.append(f"value model:        {v.value_model} (init {v.value_init}, vf_coef {v.vf_coef:g}, "
                         f"clip {v.clip_eps_value:g})")
        return lines
