"""GAE: per-token rewards (the KL penalty on every token, the reward at the last), a value model, lambda-returns."""

from __future__ import annotations

from pydantic import Field

from alignkit.online.parts.base import AdvantageInputs, AdvantageOutput, PartConfig, register_advantage
from alignkit.online.ppo import gae as gae_recursion
from alignkit.online.ppo import masked_moments, token_rewards, whiten

__all__ = ["GAEConfig", "gae"]


class GAEConfig(PartConfig):
    """Settings of :func:`gae`."""

    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the per-token rewards.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (0: one-step TD error, 1: Monte Carlo return).")
    whiten: bool = Field(True, description="Whiten the advantages over every process's tokens.")


@register_advantage("gae", config=GAEConfig, needs_values=True)
def gae(inputs: AdvantageInputs, cfg: GAEConfig) -> AdvantageOutput:
    """Generalised advantage estimation with a learned value model (PPO).

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation";
    Ziegler et al. 2019 and Ouyang et al. 2022 for the per-token KL reward of language models.

    Formula::

        r_t     = -beta * kl_t + [t = last token] * R
        delta_t = r_t + gamma * V_{t+1} - V_t          (V = 0 after the last token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        G_t     = A_t + V_t                            (value targets)
        A_t     <- (A_t - mean(A)) / sqrt(var(A) + 1e-8)   over every process's tokens (whiten)

    beta is the KL weight in the reward (0 when the KL sits in the loss).
    """
    assert inputs.values is not None  # the trainer builds a value model for estimators with needs_values
    rewards = token_rewards(inputs.token_kl, inputs.rewards.to(inputs.token_kl.device), inputs.mask, inputs.kl_coef)
    advantages, returns = gae_recursion(rewards, inputs.values, inputs.mask, cfg.gamma, cfg.lam)
    if cfg.whiten:
        moments = inputs.reduce(masked_moments(advantages, inputs.mask))
        advantages = whiten(advantages, inputs.mask, moments=(moments[0], moments[1], moments[2]))
    return AdvantageOutput(advantages, returns)
