"""CPO: a reference-free DPO-style sigmoid loss plus behaviour cloning on the chosen response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from alignkit.lazy import lazy_module
from alignkit.losses.base import LossConfig, LossOutput, PreferenceStats, register_loss
from alignkit.losses.functional import average_logps, require

if TYPE_CHECKING:
    import torch.nn.functional as F
else:
    F = lazy_module("torch.nn.functional")

__all__ = ["CPOConfig", "cpo"]


class CPOConfig(LossConfig):
    """Parameters of :func:`cpo`."""

    beta: float = Field(0.1, gt=0, description="β, scale of the log-prob reward")
    sft_weight: float = Field(1.0, ge=0, description="weight of the token-mean NLL of the chosen response")


@register_loss(
    "cpo", config=CPOConfig, needs_reference=False,
    description="CPO: −log σ(β·(log π(yw) − log π(yl))) + token-mean NLL(yw); reference-free",
)
def cpo(stats: PreferenceStats, cfg: CPOConfig) -> LossOutput:
    """Contrastive Preference Optimization: DPO without a reference, regularised by the chosen NLL.

    Formula::

        loss = −log σ(β·(log π(yw) − log π(yl))) + w·(−log π(yw) / |yw|)
        rewards: β·log π(y)

    The preference term uses summed log-probs; the NLL term is the per-token mean (w = sft_weight,
    1 in the paper).

    Reference: Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation", arXiv:2401.08417.

    Args:
        stats: policy log-probs and the chosen response lengths, each (B,).
        cfg: β and the NLL weight.

    Returns:
        (B,) losses, detached (B,) rewards and metric ``nll``.
    """
    pc, pr, lc = require(stats, "cpo", "policy_chosen_logps", "policy_rejected_logps", "chosen_lengths")
    nll = -average_logps(pc, lc)
    losses = -F.logsigmoid(cfg.beta * (pc - pr)) + cfg.sft_weight * nll
    return LossOutput(losses, (cfg.beta * pc).detach(), (cfg.beta * pr).detach(), {"nll": nll.detach()})
