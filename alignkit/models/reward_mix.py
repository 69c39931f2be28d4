"""A weighted combination of rewards, each component kept for logging, with optional per-group normalisation.

GDPO (group reward-decoupled normalisation policy optimisation, 2026) normalises each reward
within the group of completions of one prompt before summing, so that a reward with a wide spread (a length
penalty) does not drown a binary one (correctness) in the group-relative advantage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["group_normalise", "weighted_sum"]


def group_normalise(values: Sequence[float], groups: Sequence[str], eps: float = 1e-6) -> list[float]:
    """Each value minus its group's mean, over its group's standard deviation (population) plus ``eps``.

    A group whose values are all equal (or of one completion) gives zeros: it says nothing about which
    completion is better.

    Args:
        values: one reward per completion.
        groups: the group of each completion (its prompt).
    """
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(values)
    for idx in members.values():
        vals = [values[i] for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        if std == 0.0:  # every completion of the prompt scored alike: no preference among them
            continue
        for i in idx:
            out[i] = (values[i] - mean) / (std + eps)
    return out


def weighted_sum(components: Mapping[str, Sequence[float]], weights: Mapping[str, float], *,
                 groups: Sequence[str] | None = None) -> list[float]:
    """``sum_j w_j r_j`` per completion; with ``groups``, each ``r_j`` is :func:`group_normalise` d first (GDPO).

    Args:
        components: reward name -> one value per completion (every list the same length).
        weights: reward name -> weight (the same names).
        groups: the prompt of each completion, to normalise within; None sums the raw values.
    """
    n = len(next(iter(components.values())))
    total = [0.0] * n
    for name, values in components.items():
        vals = group_normalise(values, groups) if groups is not None else list(values)
        for i, v in enumerate(vals):
            total[i] += weights[name] * v
    return total
