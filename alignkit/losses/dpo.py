"""The DPO family: sigmoid losses on the policy-vs-reference log-ratio margin.

    dpo   Direct Preference Optimization, with conservative (cDPO) and robust label smoothing
    dpop  DPO-Positive: DPO plus a penalty when the chosen log-prob falls below the reference's
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import logratios, require

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["DPOConfig", "DPOPConfig", "dpo", "dpop"]


class DPOConfig(LossConfig):
    """Parameters of :func:`dpo`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward (KL strength)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="ε, assumed probability that a preference label is flipped (0 = plain DPO)",
    )
    robust: bool = Field(
        False,
        description="use the unbiased robust-DPO estimator instead of conservative DPO when ε > 0",
    )
    reference_free: bool = Field(
        False,
        description="take the reference log-ratio as 0: h = log π(yw) − log π(yl), and no reference model is "
        "loaded for training",
    )


@register_loss(
    "dpo", config=DPOConfig, needs_reference=lambda cfg: not cfg.reference_free,
    description="Direct Preference Optimization: −log σ(β·h); cDPO / robust DPO via label_smoothing",
)
def dpo(stats: PreferenceStats, cfg: DPOConfig) -> LossOutput:
    """Direct Preference Optimization, optionally with noisy-label smoothing.

    Formula::

        h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl))
        dpo:    loss = −log σ(β·h)
        cDPO:   loss = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)                  (robust = false)
        robust: loss = [−(1−ε)·log σ(β·h) + ε·log σ(−β·h)] / (1 − 2ε)     (robust = true)
        rewards: β·(log π(y) − log π_ref(y)) for y = yw, yl

        reference_free = true:  log π_ref(y) is taken as 0, so
        h = log π(yw) − log π(yl),   rewards: β·log π(y)

    Log-probs are summed over response tokens. cDPO is a cross-entropy against the soft label 1 − ε,
    so it is minimised at β·h = log((1 − ε)/ε); robust DPO keeps decreasing in h.

    ``reference_free: true`` is the switch of the reference DPO implementation (eric-mitchell/
    direct-preference-optimization, ``preference_loss(..., reference_free=True)``): it compares the
    responses' likelihoods under the policy alone (an implicit uniform reference). The loss then needs
    no reference model, so none is loaded for training and ``reference.mode: none`` is allowed; any
    other ``reference.mode`` is not used for training (the run says so). Label smoothing and ``robust``
    apply as above. Held-out KL is still measured against the reference model.

    References: Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290;
    cDPO: Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO";
    robust DPO: Chowdhury et al. 2024, "Provably Robust DPO", arXiv:2403.00409.

    Args:
        stats: policy log-probs, and reference log-probs unless ``reference_free``, each (B,).
        cfg: β, ε, the smoothing variant and the reference switch.

    Returns:
        (B,) losses and detached (B,) implicit rewards.
    """
    if cfg.reference_free:  # log π_ref = 0: any reference log-probs in stats are ignored
        chosen, rejected = require(stats, "dpo", "policy_chosen_logps", "policy_rejected_logps")
    else:
        chosen, rejected = logratios(stats, "dpo")
    z = cfg.beta * (chosen - rejected)  # (B,)
    eps = cfg.label_smoothing
    if cfg.robust:
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    else:
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return LossOutput(losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach())


class DPOPConfig(LossConfig):
    """Parameters of :func:`dpop`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    penalty_weight: float = Field(
        50.0, ge=0,
        description="λ, weight of the penalty max(0, log π_ref(yw) − log π(yw)); 0 = plain DPO",
    )


@register_loss(
    "dpop", config=DPOPConfig, needs_reference=True,
    description="DPO-Positive: DPO that also penalises the chosen log-prob falling below the reference",
)
def dpop(stats: PreferenceStats, cfg: DPOPConfig) -> LossOutput:
    """DPO-Positive (DPOP), which keeps the chosen response at least as likely as under the reference.

    Formula::

        h = (log π(yw) − log π(yl)) − (log π_ref(yw) − log π_ref(yl))
        penalty = max(0, log π_ref(yw) − log π(yw))
        loss = −log σ(β·(h − λ·penalty))
        rewards: β·(log π(y) − log π_ref(y))

    Reference: Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
    DPO-Positive", arXiv:2402.13228.

    Args:
        stats: policy and reference log-probs, each (B,).
        cfg: β and λ.

    Returns:
        (B,) losses, detached (B,) implicit rewards and the (B,) penalty as metric ``penalty``.
    """
    chosen, rejected = logratios(stats, "dpop")
    penalty = (-chosen).clamp(min=0)  # (B,) how far log π(yw) fell below log π_ref(yw)
    losses = -F.logsigmoid(cfg.beta * (chosen - rejected - cfg.penalty_weight * penalty))
    return LossOutput(
        losses, (cfg.beta * chosen).detach(), (cfg.beta * rejected).detach(),
        {"penalty": penalty.detach()},
    )
