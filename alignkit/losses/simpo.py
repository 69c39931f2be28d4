"""SimPO: a reference-free loss on length-normalised log-probs with a target margin (sigmoid or hinge)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, require

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["SimPOConfig", "simpo"]


class SimPOConfig(LossConfig):
    """Parameters of :func:`simpo`. Give the margin as ``gamma`` or as ``gamma_beta_ratio``, not both."""

    beta: float = Field(2.0, gt=0, description="β, scale of the length-normalised reward")
    gamma_beta_ratio: float = Field(
        0.5, ge=0, description="γ/β, the target margin relative to β (used unless gamma is given)",
    )
    gamma: float | None = Field(
        None, ge=0, description="γ, the target reward margin; overrides the default gamma_beta_ratio",
    )
    loss_type: Literal["sigmoid", "hinge"] = Field(
        "sigmoid",
        description="sigmoid: −log σ(z), the paper's loss; hinge: max(0, 1 − z); z = β·(a(yw) − a(yl)) − γ",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="ε (sigmoid only), assumed probability that a preference label is flipped (0 = plain SimPO)",
    )

    @model_validator(mode="after")
    def _check(self) -> SimPOConfig:
        if self.gamma is not None and "gamma_beta_ratio" in self.model_fields_set:
            raise ValueError("give either gamma or gamma_beta_ratio, not both")
        if self.loss_type == "hinge" and self.label_smoothing > 0:
            # The SimPO repository ignores it under hinge; a setting that silently does nothing is an error here.
            raise ValueError(f"label_smoothing ({self.label_smoothing}) applies to loss_type 'sigmoid' only; "
                             "the hinge loss has no labels to smooth: remove label_smoothing or use sigmoid")
        return self

    @property
    def effective_gamma(self) -> float:
        """γ, from ``gamma`` when given, else β·``gamma_beta_ratio``."""
        return self.gamma if self.gamma is not None else self.beta * self.gamma_beta_ratio


@register_loss(
    "simpo", config=SimPOConfig, needs_reference=False,
    description="SimPO: −log σ(β·(avg log π(yw) − avg log π(yl)) − γ); reference-free; hinge and smoothed variants",
)
def simpo(stats: PreferenceStats, cfg: SimPOConfig) -> LossOutput:
    """Simple Preference Optimization: length-normalised rewards, a target margin, no reference.

    Formula::

        a(y) = log π(y) / |y|            (per-token mean log-prob)
        z = β·(a(yw) − a(yl)) − γ,       γ = gamma or β·gamma_beta_ratio
        sigmoid:  loss = −(1−ε)·log σ(z) − ε·log σ(−z)      (ε = label_smoothing; 0 = the paper's loss)
        hinge:    loss = max(0, 1 − z)
        rewards: β·a(y)

    The variants are those of the SimPO repository's trainer (princeton-nlp/SimPO,
    scripts/simpo_trainer.py, ``loss_type: sigmoid | hinge`` and ``label_smoothing``), which writes
    z as β·((a(yw) − a(yl)) − γ/β). Sigmoid with ε > 0 is a cross-entropy against the soft label
    1 − ε, minimised at z = log((1 − ε)/ε) (as cDPO); the hinge loss is zero once z >= 1. Label
    smoothing with the hinge loss is an error (the repository ignores it).

    Reference: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734.

    Args:
        stats: policy log-probs and response lengths, each (B,).
        cfg: β, the margin, the loss type and ε.

    Returns:
        (B,) losses and detached (B,) rewards β·a(y).
    """
    pc, pr, lc, lr = require(
        stats, "simpo", "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths", "rejected_lengths"
    )
    chosen = cfg.beta * average_logps(pc, lc)
    rejected = cfg.beta * average_logps(pr, lr)
    z = chosen - rejected - cfg.effective_gamma  # (B,)
    if cfg.loss_type == "hinge":
        losses = F.relu(1 - z)
    else:
        eps = cfg.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return LossOutput(losses, chosen.detach(), rejected.detach())
