"""WARP's weight arithmetic (Ramé et al. 2024): SLERP of task vectors, LITI, and the interpolation front.

All functions take and return ``{name: tensor}`` dicts of the *trainable* tensors (the whole model for full
fine-tuning, the bottleneck adapter otherwise) and work tensor by tensor.

SLERP of two task vectors d1 = theta_1 - theta_init, d2 = theta_2 - theta_init with angle Omega:

    slerp(d1, d2, lambda) = sin((1 - lambda) Omega) / sin(Omega) * d1 + sin(lambda Omega) / sin(Omega) * d2

For M > 2 runs the merge is iterative, m = 2..M: merged <- slerp(merged, d_m, 1/m) (lambda = 1/M for two
runs is the usual 1/2). In the small-angle (linear) limit this gives every run the weight 1/M; on the sphere
the later runs get a slightly smaller share (three orthogonal unit vectors come out as 0.61, 0.61, 0.5). Where the angle is ~0 or ~pi, or a task vector is ~0,
sin(Omega) ~ 0 and the formula is undefined: the linear mix (1 - lambda) d1 + lambda d2 is used instead
(its limit for Omega -> 0).

LITI (linear interpolation towards initialisation) sets the next iteration's start:

    theta_init <- (1 - eta) theta_init + eta theta_slerp

and the final front is (1 - eta) theta_sft + eta theta_final on a grid of eta.

LoRA is not supported: averaging the A and B factors separately is not averaging their product B A (the
merge is bilinear, so it would not be the SLERP of the effective weight deltas). See docs/online.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["interpolate", "liti", "slerp", "slerp_merge", "task_vectors"]

State = Mapping[str, Tensor]


def _check_keys(reference: State, other: State, what: str) -> None:
    if set(reference) != set(other):
        missing = sorted(set(reference) ^ set(other))[:5]
        raise ValueError(f"{what}: tensors differ in names (e.g. {missing})")


def slerp(d1: Tensor, d2: Tensor, lam: float, eps: float = 1e-6) -> Tensor:
    """Spherical interpolation of two task vectors (any equal shapes), linear where it is undefined.

    Args:
        d1: first task vector.
        d2: second task vector, same shape.
        lam: weight of ``d2`` in [0, 1].
        eps: below this norm a vector counts as zero, and below this sin(Omega) the angle as 0 or pi.

    Returns:
        A tensor of the same shape and dtype as ``d1``.
    """
    if d1.shape != d2.shape:
        raise ValueError(f"task vectors differ in shape: {tuple(d1.shape)} vs {tuple(d2.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    a, b = d1.double().flatten(), d2.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    linear = (1 - lam) * d1.double() + lam * d2.double()
    if na < eps or nb < eps:
        return linear.to(d1.dtype)
    cos = max(-1.0, min(1.0, float(a @ b) / (na * nb)))
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    if sin_omega < eps:
        return linear.to(d1.dtype)
    out = (math.sin((1 - lam) * omega) / sin_omega) * d1.double() + (math.sin(lam * omega) / sin_omega) * d2.double()
    return out.to(d1.dtype)


def task_vectors(init: State, thetas: Sequence[State]) -> list[dict[str, Tensor]]:
    """theta_m - theta_init for every run m."""
    out = []
    for m, theta in enumerate(thetas):
        _check_keys(init, theta, f"run {m}")
        out.append({k: theta[k].to(init[k].dtype) - init[k] for k in init})
    return out


def slerp_merge(init: State, thetas: Sequence[State], eps: float = 1e-6) -> dict[str, Tensor]:
    """theta_init + the iterative per-tensor SLERP of the M runs' task vectors (equal weights 1/M).

    Args:
        init: the weights every run started from.
        thetas: M >= 1 trained weights (same names and shapes as ``init``).
        eps: see :func:`slerp`.
    """
    if not thetas:
        raise ValueError("slerp_merge needs at least one run")
    deltas = task_vectors(init, thetas)
    merged = dict(deltas[0])
    for m, delta in enumerate(deltas[1:], start=2):
        merged = {k: slerp(merged[k], delta[k], 1.0 / m, eps) for k in merged}
    return {k: init[k] + merged[k] for k in init}


def interpolate(start: State, end: State, eta: float) -> dict[str, Tensor]:
    """(1 - eta) * start + eta * end, per tensor (eta outside [0, 1] extrapolates)."""
    _check_keys(start, end, "interpolate")
    return {k: torch.lerp(start[k], end[k].to(start[k].dtype), eta) for k in start}


def liti(init: State, merged: State, eta: float) -> dict[str, Tensor]:
    """LITI: the next iteration's start, (1 - eta) theta_init + eta theta_slerp, with eta in [0, 1]."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"LITI eta must be in [0, 1], got {eta}")
    return interpolate(init, merged, eta)
