"""The registered per-token KL estimators of KL(pi || pi_ref) on tokens sampled from pi (Schulman 2020,
"Approximating KL Divergence"). ``logps`` carries the gradient; ``ref_logps`` is detached. Each computes
:func:`alignkit.models.kl_estimators.kl_estimate`, the one implementation of the three."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.models.kl_estimators import kl_estimate
from alignkit.online.parts.base import register_kl_estimator

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["k1", "k2", "k3"]


@register_kl_estimator("k1", sequence_form=True)
def k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1: the log-ratio; unbiased, high variance, can be negative.

    Formula::

        k1_t = log pi_t - log pi_ref_t
    """
    return kl_estimate(logps, ref_logps, "k1")


@register_kl_estimator("k2")
def k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2: half the squared log-ratio; >= 0, biased, low variance (its gradient is that of KL in expectation).

    Formula::

        k2_t = 1/2 * (log pi_t - log pi_ref_t)^2
    """
    return kl_estimate(logps, ref_logps, "k2")


@register_kl_estimator("k3")
def k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3: the control-variate estimator; unbiased and >= 0 (GRPO's KL term).

    Formula::

        d_t  = log pi_ref_t - log pi_t
        k3_t = exp(d_t) - d_t - 1      (computed as expm1(d) - d, clamped at 0 against rounding)
    """
    return kl_estimate(logps, ref_logps, "k3")
