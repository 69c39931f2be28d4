"""Win rate of the policy against a baseline from judged pairs: its interval, ties, lengths, and a
length-controlled win rate.

Scores: each pair scores 1 (policy preferred in both orders), 0 (baseline preferred in both) or 0.5
(anything else; see :func:`alignkit.eval.judges.base.pair_score`). The win rate is the mean score, so a
tie counts half; its 95% interval is a percentile bootstrap over pairs (:func:`alignkit.eval.stats.bootstrap_ci`).

Length control. Judges, human and model alike, favour longer answers, so a policy can "win" by writing
more. We fit a logistic regression of the pair score on the standardized length difference,

    P(policy preferred | x) = sigmoid(a + b * x),   x = (len_policy - len_baseline) / sd(len_policy - len_baseline),

by penalized maximum likelihood (fractional scores are allowed: 0.5 contributes half a win and half a loss;
an L2 penalty ``l2 * b**2 / 2`` keeps b finite when length separates the outcomes), and report
``sigmoid(a)``: the predicted win rate of a policy response as long as the baseline's. With no length
difference at all it equals the plain win rate. Its interval is a bootstrap of the whole fit (numpy only,
vectorized over resamples). This is the same idea as AlpacaEval 2's length-controlled win rate, reduced to a
single length feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignkit.eval.stats import Interval, bootstrap_ci

__all__ = ["LengthStats", "WinRateReport", "fit_length_logistic", "length_controlled_win_rate", "win_rate_report"]

_CLIP = 30.0  # |a|, |b| bound: sigmoid(30) is 1 to float precision, and degenerate resamples stay finite


def fit_length_logistic(scores: np.ndarray, x: np.ndarray, l2: float = 1.0, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Penalized logistic fit of ``scores`` on ``x``, for a batch of data sets at once.

    Args:
        scores: (R, N) targets in [0, 1].
        x: (R, N) feature (standardized length difference).
        l2: penalty on the slope b (not on the intercept a).
        iters: Newton steps (the problem is strictly convex; 50 is ample).

    Returns:
        a (R,), b (R,): intercepts and slopes.
    """
    s, x = np.atleast_2d(scores).astype(np.float64), np.atleast_2d(x).astype(np.float64)
    a = np.zeros(s.shape[0])
    b = np.zeros(s.shape[0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a[:, None] + b[:, None] * x)))  # (R, N)
        w = p * (1 - p)
        r = p - s
        g_a = r.sum(-1)
        g_b = (r * x).sum(-1) + l2 * b
        h_aa = w.sum(-1) + 1e-9  # a tiny ridge keeps the 2x2 Hessian invertible when all p are 0 or 1
        h_ab = (w * x).sum(-1)
        h_bb = (w * x * x).sum(-1) + l2
        det = h_aa * h_bb - h_ab**2
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        a = np.clip(a - step_a, -_CLIP, _CLIP)
        b = np.clip(b - step_b, -_CLIP, _CLIP)
    return a, b


def _standardized_difference(policy_lengths: np.ndarray, baseline_lengths: np.ndarray) -> np.ndarray:
    diff = policy_lengths - baseline_lengths
    sd = diff.std()
    # Standardizing by the spread (not centring) keeps x = 0 meaning "equal length".
    return diff / sd if sd > 0 else np.zeros_like(diff)


def length_controlled_win_rate(
    scores: Sequence[float] | np.ndarray,
    policy_lengths: Sequence[float] | np.ndarray,
    baseline_lengths: Sequence[float] | np.ndarray,
    *,
    l2: float = 1.0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Interval, float]:
    """The win rate predicted at zero length difference, with a bootstrap interval, and the fitted slope.

    Args:
        scores: N pair scores in {0, 0.5, 1} (any value in [0, 1] works).
        policy_lengths: N policy response lengths (tokens, words: any unit, the same for both).
        baseline_lengths: N baseline response lengths.
        l2: slope penalty (see the module docstring).
        n_resamples: bootstrap resamples of the pairs.
        confidence: interval coverage.
        seed: resampling seed.

    Returns:
        (sigmoid(a) with its interval, b): b > 0 means longer policy responses win more often.
    """
    s = np.asarray(scores, dtype=np.float64)
    x = _standardized_difference(np.asarray(policy_lengths, np.float64), np.asarray(baseline_lengths, np.float64))
    if s.size == 0 or s.shape != x.shape:
        raise ValueError(f"need N > 0 scores and N lengths each; got {s.shape} scores and {x.shape} lengths")
    a, b = fit_length_logistic(s[None], x[None], l2=l2)
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_resamples, s.size))  # (R, N)
    ra, _ = fit_length_logistic(s[idx], x[idx], l2=l2)
    rates = 1.0 / (1.0 + np.exp(-ra))
    # All-equal scores have no finite fit (a -> +-inf); their win rate is simply that score.
    resampled = s[idx]
    rates = np.where(resampled.min(-1) == resampled.max(-1), resampled[:, 0], rates)
    estimate = float(s[0]) if s.min() == s.max() else float(1.0 / (1.0 + np.exp(-a[0])))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(rates, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high)), float(b[0])


@dataclass
class LengthStats:
    """Mean and median response length of each side, and how often the policy's is longer."""

    policy_mean: float
    baseline_mean: float
    policy_median: float
    baseline_median: float
    policy_longer_fraction: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class WinRateReport:
    """Win rate of the policy against a baseline over N judged pairs.

    Attributes:
        n: pairs judged.
        wins, ties, losses: pairs scoring 1, 0.5 and 0.
        win_rate: mean score (a tie counts 0.5) with its bootstrap interval.
        tie_rate: ties / n.
        invalid_verdicts: verdicts (of 2n) without a usable answer; their pairs count as ties.
        length: response length statistics.
        length_controlled: win rate at zero length difference with its interval (None with fewer than 2 pairs).
        length_slope: fitted effect of the standardized length difference on the log-odds of winning.
    """

    n: int
    wins: int
    ties: int
    losses: int
    win_rate: Interval
    tie_rate: float
    invalid_verdicts: int
    length: LengthStats
    length_controlled: Interval | None
    length_slope: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "wins": self.wins, "ties": self.ties, "losses": self.losses,
            "win_rate": self.win_rate.to_dict(), "tie_rate": self.tie_rate,
            "invalid_verdicts": self.invalid_verdicts, "length": self.length.to_dict(),
            "length_controlled_win_rate": self.length_controlled.to_dict() if self.length_controlled else None,
            "length_slope": self.length_slope,
        }


def win_rate_report(
    scores: Sequence[float] | np.ndarray,
    policy_lengths: Sequence[float] | np.ndarray,
    baseline_lengths: Sequence[float] | np.ndarray,
    *,
    invalid_verdicts: int = 0,
    length_unit: str = "tokens",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRateReport:
    """Summarize N pair scores (see the module docstring for every figure).

    Args:
        scores: N pair scores in [0, 1].
        policy_lengths: N policy response lengths.
        baseline_lengths: N baseline response lengths.
        invalid_verdicts: verdicts (of the 2N) without a usable answer.
        length_unit: what the lengths count, for the report.
        n_resamples: bootstrap resamples.
        confidence: interval coverage.
        seed: resampling seed.

    Raises:
        ValueError: no pairs, scores outside [0, 1], a length per pair missing, or no valid verdict at all
            (``invalid_verdicts == 2N``: such a "win rate" would be 0.5 that no verdict supports).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no judged pairs to compute a win rate from")
    if not 0 <= invalid_verdicts <= 2 * s.size:
        raise ValueError(f"invalid_verdicts must lie in [0, {2 * s.size}] (2 verdicts per pair), got {invalid_verdicts}")
    if invalid_verdicts == 2 * s.size:
        raise ValueError(f"none of the {2 * s.size} verdicts is valid: there is no win rate to report")
    if np.any((s < 0) | (s > 1)):
        raise ValueError("pair scores must lie in [0, 1]")
    lp, lb = np.asarray(policy_lengths, np.float64), np.asarray(baseline_lengths, np.float64)
    if lp.shape != s.shape or lb.shape != s.shape:
        raise ValueError(f"need one length per pair: {s.size} scores, {lp.size} policy, {lb.size} baseline lengths")
    lc, slope = (None, None)
    if s.size >= 2:
        lc, slope = length_controlled_win_rate(s, lp, lb, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return WinRateReport(
        n=int(s.size),
        wins=int((s == 1).sum()),
        ties=int((s == 0.5).sum()),
        losses=int((s == 0).sum()),
        win_rate=bootstrap_ci(s, n_resamples=n_resamples, confidence=confidence, seed=seed),
        tie_rate=float((s == 0.5).mean()),
        invalid_verdicts=invalid_verdicts,
        length=LengthStats(float(lp.mean()), float(lb.mean()), float(np.median(lp)), float(np.median(lb)),
                           float((lp > lb).mean()), length_unit),
        length_controlled=lc,
        length_slope=slope,
    )
