"""Shared pieces of the loss tests: the losses under test, hypothesis strategies, contract checks.

Every registered loss is checked, including the example plugin (examples/my_losses.py), which is
loaded here so that parametrizing over ``list_losses()`` picks it up like any built-in.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
from conftest import single_thread  # noqa: F401  (the loss suites import it from here)
from hypothesis import strategies as st

from alignkit.losses import (
    KWAY,
    LOGPS,
    SCORES,
    UNPAIRED,
    LossConfig,
    LossOutput,
    LossSpec,
    PreferenceStats,
    list_losses,
)
from alignkit.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = ROOT / "examples" / "my_losses.py"

load_plugins(["my_losses.py"], base_dir=EXAMPLE_PLUGIN.parent)

PROPERTY_LOSSES: list[LossSpec] = list_losses()
PROPERTY_IDS = [s.name for s in PROPERTY_LOSSES]

LOGP_MIN = -1e4  # the most negative summed log-prob the suite feeds a loss
MAX_LEN = 2048

logps = st.floats(LOGP_MIN, 0.0, width=32)
lengths = st.integers(1, MAX_LEN)
scores = st.floats(-1e4, 1e4, width=32)




def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@st.composite
def logps_stats(draw: st.DrawFn, max_batch: int = 4) -> PreferenceStats:
    """Policy and reference log-probs in [-1e4, 0] and lengths in [1, 2048], batch 1..max_batch."""
    b = draw(st.integers(1, max_batch))
    col = lambda s: _t([float(v) for v in draw(st.lists(s, min_size=b, max_size=b))])  # noqa: E731
    return PreferenceStats(
        policy_chosen_logps=col(logps), policy_rejected_logps=col(logps),
        chosen_lengths=col(lengths), rejected_lengths=col(lengths),
        reference_chosen_logps=col(logps), reference_rejected_logps=col(logps),
    )


@st.composite
def scores_stats(draw: st.DrawFn, max_batch: int = 4) -> PreferenceStats:
    """Chosen/rejected reward-model scores in [-1e4, 1e4]."""
    b = draw(st.integers(1, max_batch))
    col = lambda: _t(draw(st.lists(scores, min_size=b, max_size=b)))  # noqa: E731
    return PreferenceStats(chosen_scores=col(), rejected_scores=col())


@st.composite
def kway_stats(draw: st.DrawFn, max_batch: int = 4) -> PreferenceStats:
    """(B, K) scores in [-1e4, 1e4] with K in 2..5 and the index of the best candidate."""
    b, k = draw(st.integers(1, max_batch)), draw(st.integers(2, 5))
    rows = draw(st.lists(st.lists(scores, min_size=k, max_size=k), min_size=b, max_size=b))
    best = draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b))
    return PreferenceStats(scores=torch.tensor(rows), best_index=torch.tensor(best))


@st.composite
def unpaired_stats(draw: st.DrawFn, max_batch: int = 4) -> PreferenceStats:
    """Unpaired log-probs in [-1e4, 0] with labels (both kinds drawn), and B mismatched pairs' log-probs."""
    b = draw(st.integers(1, max_batch))
    col = lambda s: _t([float(v) for v in draw(st.lists(s, min_size=b, max_size=b))])  # noqa: E731
    return PreferenceStats(
        policy_logps=col(logps), reference_logps=col(logps), lengths=col(lengths),
        labels=torch.tensor(draw(st.lists(st.booleans(), min_size=b, max_size=b))),
        policy_mismatched_logps=col(logps), reference_mismatched_logps=col(logps),
    )


def stats_for(spec: LossSpec) -> st.SearchStrategy[PreferenceStats]:
    """The strategy producing the statistics a loss reads (by its declared ``inputs``)."""
    strategies = {LOGPS: logps_stats(), SCORES: scores_stats(), KWAY: kway_stats(), UNPAIRED: unpaired_stats()}
    return strategies[spec.inputs]


def float_fields(stats: PreferenceStats) -> list[str]:
    return [
        f.name for f in fields(stats)
        if isinstance(getattr(stats, f.name), torch.Tensor) and getattr(stats, f.name).is_floating_point()
    ]


def with_grad(stats: PreferenceStats) -> PreferenceStats:
    """A copy whose floating tensors are fresh leaves that require grad."""
    return replace(stats, **{n: getattr(stats, n).clone().requires_grad_(True) for n in float_fields(stats)})


def grad_of(stats: PreferenceStats, name: str) -> torch.Tensor:
    value = getattr(stats, name)
    return value.grad if value.grad is not None else torch.zeros_like(value)


def check_output_contract(spec: LossSpec, stats: PreferenceStats, cfg: LossConfig | None = None) -> LossOutput:
    """The contract every loss keeps, whatever its formula (with ``cfg``; the defaults when None).

    (B,) fp32 finite losses; detached (B,) rewards and metrics; finite gradients for every input;
    no reduction over the batch (each example's loss equals the loss of that example alone).
    """
    stats = with_grad(stats)
    out = spec(stats, cfg)
    b = stats.batch_size
    assert out.losses.shape == (b,), f"{spec.name}: losses shape {tuple(out.losses.shape)}, want ({b},)"
    assert out.losses.dtype == torch.float32
    assert torch.isfinite(out.losses).all(), f"{spec.name}: non-finite loss {out.losses}"
    for label, value in [("chosen_rewards", out.chosen_rewards), ("rejected_rewards", out.rejected_rewards),
                         *((f"metrics[{k!r}]", v) for k, v in out.metrics.items())]:
        assert value.shape == (b,), f"{spec.name}: {label} shape {tuple(value.shape)}, want ({b},)"
        assert not value.requires_grad, f"{spec.name}: {label} is not detached"
        assert torch.isfinite(value).all(), f"{spec.name}: non-finite {label} {value}"
    out.losses.sum().backward()
    for name in float_fields(stats):
        g = grad_of(stats, name)
        assert torch.isfinite(g).all(), f"{spec.name}: non-finite gradient for {name}: {g}"
    # No batch reduction inside: example 0 alone gives the same loss (batch-level samples, such as KTO's
    # mismatched pairs, are not examples and stay whole).
    first = PreferenceStats(**{
        f.name: (None if getattr(stats, f.name) is None else getattr(stats, f.name).detach())
        for f in fields(stats)
    }).examples(slice(0, 1))
    torch.testing.assert_close(spec(first, cfg).losses, out.losses.detach()[:1])
    return out


def swap_chosen_rejected(stats: PreferenceStats) -> PreferenceStats:
    """The same pairs with the chosen and rejected responses exchanged."""
    return replace(
        stats,
        policy_chosen_logps=stats.policy_rejected_logps, policy_rejected_logps=stats.policy_chosen_logps,
        chosen_lengths=stats.rejected_lengths, rejected_lengths=stats.chosen_lengths,
        reference_chosen_logps=stats.reference_rejected_logps,
        reference_rejected_logps=stats.reference_chosen_logps,
        chosen_scores=stats.rejected_scores, rejected_scores=stats.chosen_scores,
    )


def make_stats(
    pc: float, pr: float, rc: float | None = None, rr: float | None = None, lc: float = 1.0, lr: float = 1.0
) -> PreferenceStats:
    """One example (B = 1) of log-prob statistics, for hand-worked values."""
    ref = rc is not None and rr is not None
    return PreferenceStats(
        policy_chosen_logps=_t([pc]), policy_rejected_logps=_t([pr]),
        chosen_lengths=_t([lc]), rejected_lengths=_t([lr]),
        reference_chosen_logps=_t([rc]) if ref else None,
        reference_rejected_logps=_t([rr]) if ref else None,
    )


def fixed_batch() -> PreferenceStats:
    """A deterministic batch of three log-prob examples (for tests that need no search)."""
    return PreferenceStats(
        policy_chosen_logps=_t([-12.0, -3.5, -40.0]), policy_rejected_logps=_t([-15.0, -2.0, -38.0]),
        chosen_lengths=_t([6.0, 2.0, 20.0]), rejected_lengths=_t([7.0, 1.0, 25.0]),
        reference_chosen_logps=_t([-13.0, -3.0, -41.0]), reference_rejected_logps=_t([-14.0, -2.5, -37.0]),
    )


def make_unpaired(
    policy: list[float], reference: list[float], labels: list[bool],
    mismatched: tuple[list[float], list[float]] = ([0.0], [0.0]),
) -> PreferenceStats:
    """Unpaired statistics for hand-worked values (lengths 1); ``mismatched`` = (policy, reference) log-probs
    of the mismatched pairs (by default one pair of log-ratio 0, so KTO's z₀ = 0)."""
    return PreferenceStats(
        policy_logps=_t(policy), reference_logps=_t(reference), lengths=torch.ones(len(policy)),
        labels=torch.tensor(labels), policy_mismatched_logps=_t(mismatched[0]),
        reference_mismatched_logps=_t(mismatched[1]),
    )
