"""KTO: prospect-theoretic alignment from unpaired feedback (a thumbs-up or thumbs-down on one response)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.batch_kinds import UNPAIRED
from alignkit.losses.functional import require, rewards_by_label, unpaired_logratios

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["KTOConfig", "KTO_BALANCE", "kto", "kto_reference_point"]

# The paper's advice for imbalanced data: λ_D·n_D / (λ_U·n_U) within this range (Ethayarajh et al., §4.2).
KTO_BALANCE = (1.0, 4.0 / 3.0)


class KTOConfig(LossConfig):
    """Parameters of :func:`kto`."""

    beta: float = Field(0.1, gt=0, description="β, inverse temperature of the implicit reward")
    desirable_weight: float = Field(1.0, gt=0, description="λ_D, weight of the desirable examples' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="λ_U, weight of the undesirable examples' loss")

    def label_balance_warnings(self, n_desirable: int, n_undesirable: int) -> list[str]:
        """The paper recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3]; say so when the data and weights leave it."""
        if n_desirable == 0 or n_undesirable == 0:
            return []
        low, high = KTO_BALANCE
        ratio = self.desirable_weight * n_desirable / (self.undesirable_weight * n_undesirable)
        if low <= ratio <= high:
            return []
        base = self.undesirable_weight * n_undesirable / n_desirable
        return [
            f"kto: desirable_weight·n_D / (undesirable_weight·n_U) = {self.desirable_weight:g}·{n_desirable} / "
            f"({self.undesirable_weight:g}·{n_undesirable}) = {ratio:.3g}, outside [1, 4/3], the range the KTO "
            f"paper recommends; with undesirable_weight {self.undesirable_weight:g}, a desirable_weight in "
            f"[{base * low:.3g}, {base * high:.3g}] is inside it"
        ]


def kto_reference_point(stats: PreferenceStats, loss: str) -> torch.Tensor:
    """ẑ_0 = max(0, mean of log π(y'|x') − log π_ref(y'|x') over the mismatched pairs), detached (scalar).

    The trainer pools the mismatched pairs of every process before the loss sees them, so the mean is
    the all-process one. No samples (never in training) give 0.
    """
    policy, reference = require(stats, loss, "policy_mismatched_logps", "reference_mismatched_logps")
    samples = (policy - reference).detach()
    if samples.numel() == 0:
        return samples.new_zeros(())
    return samples.mean().clamp(min=0)


@register_loss(
    "kto", config=KTOConfig, needs_reference=True, inputs=UNPAIRED, needs_mismatched=True,
    description="KTO: λ_D·(1 − σ(β·(r − z₀))) for desirable, λ_U·(1 − σ(β·(z₀ − r))) for undesirable responses",
)
def kto(stats: PreferenceStats, cfg: KTOConfig) -> LossOutput:
    """Kahneman–Tversky Optimization on unpaired examples, each labelled desirable or undesirable.

    Formula::

        r(x, y) = log π(y|x) − log π_ref(y|x)
        z₀ = max(0, mean over mismatched pairs (x', y') of log π(y'|x') − log π_ref(y'|x'))   (detached)
        desirable:   loss = λ_D·(1 − σ(β·(r − z₀)))
        undesirable: loss = λ_U·(1 − σ(β·(z₀ − r)))
        rewards: β·r;  metric kl: z₀

    z₀ estimates KL(π ‖ π_ref) as the paper does, from completions paired with another example's
    prompt: each completion after the prompt of a partner example fixed when the data is prepared
    (so the estimate also holds for a micro-batch of one and for cached reference log-probs). It is
    pooled over processes, carries no gradient and is clamped at 0. With λ_D = λ_U = λ and z₀ = 0 the
    loss is λ·σ(−s·β·r), s = +1 for a desirable response and −1 for an undesirable one. The paper
    recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples; a run
    warns when its data and weights are outside that range.

    Reference: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306.

    Args:
        stats: unpaired policy and reference log-probs and labels, each (B,), and the (M,) log-probs of
            the mismatched pairs.
        cfg: β, λ_D and λ_U.

    Returns:
        (B,) losses, detached (B,) rewards by label and z₀ as metric ``kl``.
    """
    logratios, labels = unpaired_logratios(stats, "kto")
    z0 = kto_reference_point(stats, "kto")
    desirable = cfg.desirable_weight * torch.sigmoid(-cfg.beta * (logratios - z0))  # 1 − σ(x) = σ(−x)
    undesirable = cfg.undesirable_weight * torch.sigmoid(-cfg.beta * (z0 - logratios))
    losses = torch.where(labels, desirable, undesirable)
    chosen, rejected = rewards_by_label(cfg.beta * logratios, labels)
    return LossOutput(losses, chosen, rejected, {"kl": z0.expand_as(losses).detach()})
