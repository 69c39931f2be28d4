"""Uncertainty of evaluation figures: bootstrap and normal confidence intervals, subsample spread.

Everything is numpy and vectorized: 1,000 resamples of 1,000 values is one (1000, 1000) gather.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

__all__ = ["Interval", "Spread", "bootstrap_ci", "mean_ci", "subsample_spread"]

# statistic(samples, axis=-1) -> the statistic along the last axis (np.mean, np.median, ...).
Statistic = Callable[..., np.ndarray]


class Interval(NamedTuple):
    """A point estimate with a confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width (the "±" figure)."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


class Spread(NamedTuple):
    """Mean and standard deviation of a statistic over repeated subsamples."""

    mean: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def _as_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("need at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"values must be finite; got {int((~np.isfinite(arr)).sum())} non-finite")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(values)``.

    Args:
        values: N finite numbers (one per independent unit: per prompt, not per sample, when a prompt
            has several samples).
        statistic: called as ``statistic(array, axis=-1)``; np.mean by default.
        n_resamples: bootstrap resamples B.
        confidence: coverage of the interval, e.g. 0.95.
        seed: resampling seed (the interval is reproducible).

    Returns:
        (statistic of the data, lower percentile, upper percentile) of the B resampled statistics. With
        one value, or all values equal, the interval has zero width.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = _as_values(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))  # (B, N)
    resampled = np.asarray(statistic(arr[idx], axis=-1), dtype=np.float64)  # (B,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    estimate = float(statistic(arr, axis=-1))
    return Interval(estimate, float(low), float(high))


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Normal-approximation interval of the mean: mean ± z * sd / sqrt(N) (sample sd, ddof=1).

    With one value the interval has zero width (no spread can be estimated).
    """
    _check_confidence(confidence)
    arr = _as_values(values)
    mean = float(arr.mean())
    if arr.size == 1:
        return Interval(mean, mean, mean)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(arr.std(ddof=1)) / np.sqrt(arr.size)
    return Interval(mean, mean - half, mean + half)


def subsample_spread(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    fraction: float = 0.5,
    n_subsamples: int = 100,
    seed: int = 0,
) -> Spread:
    """Mean and standard deviation of ``statistic`` over random subsamples without replacement.

    The spread reported in WARP-style reward-vs-KL tables: how much the figure moves when the
    evaluation set is a different random half of the prompts.

    Args:
        values: N finite numbers.
        statistic: called as ``statistic(array, axis=-1)``.
        fraction: subsample size as a fraction of N (at least one value).
        n_subsamples: subsamples S.
        seed: sampling seed.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n_subsamples < 1:
        raise ValueError(f"n_subsamples must be >= 1, got {n_subsamples}")
    arr = _as_values(values)
    size = max(1, int(round(fraction * arr.size)))
    rng = np.random.default_rng(seed)
    # argsort of uniform noise = S independent random permutations; keep the first `size` of each.
    idx = np.argsort(rng.random((n_subsamples, arr.size)), axis=-1)[:, :size]  # (S, size)
    stats = np.asarray(statistic(arr[idx], axis=-1), dtype=np.float64)  # (S,)
    return Spread(float(stats.mean()), float(stats.std(ddof=1)) if n_subsamples > 1 else 0.0)
