"""The estimators of KL(pi || pi_ref) from one sample of pi (Schulman 2020, "Approximating KL Divergence").

One implementation for every caller: the held-out KL of a report (:mod:`alignkit.models.kl`) and the
registered online KL estimators (:mod:`alignkit.online.parts.kl`). Importing this module does not import
torch (recipe validation lists the online estimators without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from alignkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_module("torch")

__all__ = ["KLEstimator", "kl_estimate"]

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """One sample's estimate of KL(pi || pi_ref) from the log-probs of what pi sampled.

    With d = logps - ref_logps: ``k1`` = d (unbiased, can be negative), ``k2`` = d²/2 (biased, low
    variance), ``k3`` = exp(-d) + d - 1 (unbiased and never negative). Gradient flows through ``logps``;
    ``ref_logps`` is detached.

    Shape:
        logps, ref_logps: any shape, the same for both (per token or per sequence) -> the same, float32
        (float64 if either is float64).
    """
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} must have the same "
                         "shape")
    dtype = torch.promote_types(torch.promote_types(logps.dtype, ref_logps.dtype), torch.float32)
    delta = logps.to(dtype) - ref_logps.detach().to(dtype)
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta.square()
    if estimator == "k3":
        # expm1(-d) + d, not exp(-d) + d - 1: the latter cancels to small negative numbers for |d| < ~1e-3
        # in float32; the clamp keeps the last rounding error from making it negative.
        return (torch.expm1(-delta) + delta).clamp(min=0.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1, k2 or k3")
