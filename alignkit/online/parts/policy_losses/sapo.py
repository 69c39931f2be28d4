"""SAPO: a smooth, temperature-controlled gate on the ratio in place of a hard clip."""

from __future__ import annotations

import torch
from pydantic import Field

from alignkit.online.parts.base import PartConfig, PolicyLossInputs, PolicyLossOutput, register_policy_loss

__all__ = ["SAPOConfig", "sapo"]


class SAPOConfig(PartConfig):
    """Settings of :func:`sapo`."""

    temperature_pos: float = Field(1.0, gt=0, description="tau for tokens with A > 0.")
    temperature_neg: float = Field(1.05, gt=0, description="tau for tokens with A < 0 (the paper: a little larger).")


def _peak_weight(tau: float) -> float:
    """max over rho of the gradient weight 4 sigma (1 - sigma) rho (a fine grid, rounded up by 1e-3)."""
    rho = torch.linspace(0.0, 1.0 + 60.0 / tau, 200_001, dtype=torch.float64)
    s = torch.sigmoid(tau * (rho - 1.0))
    return float((4.0 * s * (1.0 - s) * rho).max()) + 1e-3


def _bound(cfg: SAPOConfig) -> tuple[float, float]:
    return _peak_weight(cfg.temperature_pos), _peak_weight(cfg.temperature_neg)


@register_policy_loss("sapo", config=SAPOConfig, weight_bound=_bound)
def sapo(inputs: PolicyLossInputs, cfg: SAPOConfig) -> PolicyLossOutput:
    """Soft Adaptive Policy Optimization: a sigmoid gate whose slope is 1 at rho = 1 and fades away from it.

    Gao et al. 2025, "Soft Adaptive Policy Optimization" (Qwen).

    Formula::

        rho_t = exp(log pi_t - log pi_old_t)
        f(rho) = 4 / tau * sigmoid(tau * (rho - 1))          (tau: tau_pos if A_t > 0 else tau_neg)
        l_t   = -f(rho_t) * A_t

    A token's gradient weight, 4 sigma (1 - sigma) rho with sigma = sigmoid(tau (rho - 1)), is 1 at rho = 1,
    peaks a little above it (about 1.58 at tau = 1) and decays smoothly to 0 on both sides.
    """
    m = inputs.mask
    logp = inputs.logps.float()
    zeros = torch.zeros_like(logp)
    ratio = torch.exp(torch.where(m, logp - inputs.old_logps.detach().float(), zeros))
    adv = torch.where(m, inputs.advantages.detach().float(), zeros)
    tau = torch.where(adv > 0, cfg.temperature_pos, cfg.temperature_neg)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    return PolicyLossOutput(torch.where(m, -gate * adv, zeros), torch.zeros_like(m), ratio.detach())
