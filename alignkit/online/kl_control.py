"""The KL coefficient: fixed, or adapted toward a target KL (Ziegler et al. 2019, eq. 2).

Adaptive rule, once per update with the batch's mean KL to the anchor:

    e    = clip((KL - target) / target, -0.2, 0.2)
    beta <- beta * (1 + K_beta * e)

so beta grows while the policy drifts further than the target and shrinks while it stays closer.
"""

from __future__ import annotations

__all__ = ["AdaptiveKLController", "FixedKLController", "KLController"]

_CLIP = 0.2


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def update(self, kl: float) -> float:
        """No change; returns beta."""
        return self.beta


class AdaptiveKLController:
    """beta <- beta * (1 + k_beta * clip((kl - target) / target, -0.2, 0.2)).

    Args:
        beta: starting coefficient (> 0: a multiplicative rule cannot leave 0).
        target: the KL (nats per sequence) to steer toward.
        k_beta: gain; Ziegler et al. use 0.1.
    """

    def __init__(self, beta: float, target: float, k_beta: float = 0.1) -> None:
        if beta <= 0:
            raise ValueError(f"an adaptive beta must start > 0, got {beta}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if not 0 < k_beta < 1 / _CLIP:
            raise ValueError(f"k_beta must be in (0, {1 / _CLIP}) so that beta stays positive, got {k_beta}")
        self.beta = float(beta)
        self.target = float(target)
        self.k_beta = float(k_beta)

    def update(self, kl: float) -> float:
        """Move beta after an update whose batch had mean KL ``kl``; returns the new beta."""
        error = min(max((kl - self.target) / self.target, -_CLIP), _CLIP)
        self.beta *= 1.0 + self.k_beta * error
        return self.beta


KLController = FixedKLController | AdaptiveKLController
