"""KTO and unpaired BCO: hand-worked values with their derivations, and properties of their formulas.

As in test_loss_values.py, σ(ln 3) = 3/4 and σ(−ln 3) = 1/4, so 1 − σ(ln 3) = 1/4, −log σ(ln 3) = ln(4/3)
and −log σ(−ln 3) = ln 4.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_cases import make_stats, make_unpaired, single_thread, unpaired_stats

from alignkit.losses import PreferenceStats, build_objective, get_loss
from alignkit.losses.bco import RewardShift
from alignkit.losses.kto import KTOConfig

FAST = settings(max_examples=30, deadline=None)
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def run(name: str, stats: PreferenceStats, state=None, **params):
    spec = get_loss(name)
    return spec(stats, spec.config(**params), state)


def close(t: torch.Tensor, values: list[float]) -> None:
    torch.testing.assert_close(t, torch.tensor(values), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Hand-worked values

def test_kto_hand_values() -> None:
    """β = 1, two examples of log-ratio r = ln 3, one desirable and one undesirable.

    z₀ = 0 (mismatched log-ratio 0):  desirable 1 − σ(ln 3) = 1/4;  undesirable 1 − σ(−ln 3) = 3/4.
    λ_D = 2, λ_U = 1/2 scale them: 1/2 and 3/8.  Rewards β·r = ln 3, by label; metric kl = 0.
    """
    s = make_unpaired([LN3 - 2, LN3 - 2], [-2.0, -2.0], [True, False])
    out = run("kto", s, beta=1.0)
    close(out.losses, [0.25, 0.75])
    close(out.chosen_rewards, [LN3, 0.0])
    close(out.rejected_rewards, [0.0, LN3])
    close(out.metrics["kl"], [0.0, 0.0])
    close(run("kto", s, beta=1.0, desirable_weight=2.0, undesirable_weight=0.5).losses, [0.5, 0.375])


def test_kto_reference_point_from_mismatched_pairs() -> None:
    """Mismatched log-ratios 0 and 2·ln 3 average to z₀ = ln 3 (β = 1).

    desirable, r = ln 9:  1 − σ(ln 9 − ln 3) = 1/4;   undesirable, r = 0:  1 − σ(ln 3 − 0) = 1/4.
    Mismatched log-ratios −1 and −5 average to −3 < 0: z₀ is clamped to 0, so r = ln 9 gives 1 − σ(ln 9) = 1/10.
    """
    s = make_unpaired([2 * LN3 - 1, -1.0], [-1.0, -1.0], [True, False],
                      mismatched=([-4.0, 2 * LN3 - 4], [-4.0, -4.0]))
    out = run("kto", s, beta=1.0)
    close(out.losses, [0.25, 0.25])
    close(out.metrics["kl"], [LN3, LN3])
    clamped = make_unpaired([2 * LN3 - 1], [-1.0], [True], mismatched=([-5.0, -9.0], [-4.0, -4.0]))
    close(run("kto", clamped, beta=1.0).losses, [0.1])


def test_bco_hand_values() -> None:
    """β = 1, r = ln 3 for both examples.

    δ = 0:     desirable −log σ(ln 3) = ln(4/3);   undesirable −log σ(−ln 3) = ln 4.
    δ = ln 3:  desirable −log σ(0) = ln 2;          undesirable −log σ(−(ln 3 − ln 3)) = ln 2.
    """
    s = make_unpaired([LN3 - 2, LN3 - 2], [-2.0, -2.0], [True, False])
    out = run("bco", s, beta=1.0)
    close(out.losses, [math.log(4 / 3), LN4])
    close(out.metrics["delta"], [0.0, 0.0])
    shifted = RewardShift()
    shifted.delta = LN3
    close(run("bco", s, shifted, beta=1.0).losses, [LN2, LN2])


def test_bco_reward_shift_is_the_running_mean_of_the_rewards() -> None:
    """Step 1 has rewards ln 3, −ln 3, 2 (δ = 2/3 after it); step 2 has reward 4: δ = (2 + 4)/4 = 3/2.

    δ moves only after a step: every batch of a step uses the δ of the steps before it.
    """
    objective = build_objective({"name": "bco", "beta": 1.0})
    state = objective.new_state()
    assert state is not None
    step1 = make_unpaired([LN3, -LN3, 2.0], [0.0, 0.0, 0.0], [True, False, True])
    step2 = make_unpaired([3.0], [-1.0], [False])
    state.update(state.totals(step1))
    assert state.to_json()["bco"]["delta"] == pytest.approx(2 / 3)
    close(objective(step2, state).metrics["delta"], [2 / 3])
    state.update(state.totals(step2))
    assert state.to_json() == {"bco": {"delta": pytest.approx(1.5), "count": 4.0}}
    restored = objective.new_state()
    assert restored is not None
    restored.load_json(state.to_json())
    torch.testing.assert_close(objective(step1, restored).losses, objective(step1, state).losses)


# ---------------------------------------------------------------------------------------------------------
# Properties

def _without_reference_point(stats: PreferenceStats) -> PreferenceStats:
    """The same examples with mismatched log-ratios of 0, so z₀ = 0."""
    return PreferenceStats(**{**vars(stats), "reference_mismatched_logps": stats.policy_mismatched_logps})


@FAST
@given(stats=unpaired_stats(), beta=st.floats(0.01, 5.0), weight=st.floats(0.1, 3.0))
def test_kto_closed_form_with_equal_weights_and_no_reference_point(
    stats: PreferenceStats, beta: float, weight: float
) -> None:
    """λ_D = λ_U = λ and z₀ = 0: 1 − σ(x) = σ(−x) turns both cases into loss = λ·σ(−s·β·r), s = ±1 by label."""
    stats = _without_reference_point(stats)
    r = stats.policy_logps - stats.reference_logps
    sign = stats.labels.float() * 2 - 1
    out = run("kto", stats, beta=beta, desirable_weight=weight, undesirable_weight=weight)
    torch.testing.assert_close(out.losses, weight * torch.sigmoid(-sign * beta * r))


@FAST
@given(stats=unpaired_stats())
def test_kto_flipping_labels_is_negating_the_log_ratio_when_z0_is_zero(stats: PreferenceStats) -> None:
    stats = _without_reference_point(stats)
    flipped = PreferenceStats(**{**vars(stats), "labels": ~stats.labels})
    negated = PreferenceStats(**{**vars(stats), "policy_logps": stats.reference_logps,
                                 "reference_logps": stats.policy_logps})
    torch.testing.assert_close(run("kto", flipped).losses, run("kto", negated).losses)


@pytest.mark.parametrize("name", ["kto", "bco"])
def test_monotone_in_the_log_ratio_by_label(name: str) -> None:
    """A desirable response's loss never rises with its log-ratio; an undesirable one's never falls."""
    r = torch.linspace(-200.0, 200.0, 2001)
    for label, direction in ((True, -1.0), (False, 1.0)):
        s = make_unpaired(r.tolist(), [0.0] * len(r), [label] * len(r), mismatched=([-1.0, 3.0], [0.0, 0.0]))
        steps = direction * (run(name, s, beta=0.5).losses.diff())
        assert (steps >= -1e-6).all(), f"{name}: wrong direction for label {label}"


def test_kto_reference_point_carries_no_gradient() -> None:
    s = make_unpaired([-1.0, -2.0], [-1.5, -1.5], [True, False], mismatched=([-3.0, -1.0], [-4.0, -4.0]))
    s.policy_mismatched_logps.requires_grad_(True)
    s.policy_logps.requires_grad_(True)
    get_loss("kto")(s).losses.sum().backward()
    assert s.policy_mismatched_logps.grad is None
    assert s.policy_logps.grad is not None


@FAST
@given(stats=unpaired_stats(), delta=st.floats(-3, 3))
def test_bco_on_a_split_pair_is_bco_pair(stats: PreferenceStats, delta: float) -> None:
    """Each pair split into its desirable chosen and undesirable rejected response: bco's two losses add up
    to bco_pair's with the same δ."""
    pair = make_stats(pc=float(stats.policy_logps[0]), pr=float(stats.policy_mismatched_logps[0]),
                      rc=float(stats.reference_logps[0]), rr=float(stats.reference_mismatched_logps[0]))
    split = make_unpaired([float(stats.policy_logps[0]), float(stats.policy_mismatched_logps[0])],
                          [float(stats.reference_logps[0]), float(stats.reference_mismatched_logps[0])], [True, False])
    shift = RewardShift()
    shift.delta = delta
    torch.testing.assert_close(run("bco", split, shift).losses.sum().reshape(1),
                               run("bco_pair", pair, delta=delta).losses, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    ("weights", "counts", "warned"),
    [((1.0, 1.0), (50, 50), False), ((1.0, 1.0), (10, 90), True), ((1.0, 1.0), (90, 10), True),
     ((4.0, 1.0), (20, 80), False), ((1.0, 1.0), (0, 10), False)],
)
def test_kto_warns_outside_the_papers_range(weights: tuple[float, float], counts: tuple[int, int],
                                            warned: bool) -> None:
    """λ_D·n_D / (λ_U·n_U) in [1, 4/3] is what the paper recommends; only one label present: no ratio."""
    cfg = KTOConfig(desirable_weight=weights[0], undesirable_weight=weights[1])
    warnings = build_objective({"name": "kto", "desirable_weight": weights[0],
                                "undesirable_weight": weights[1]}).label_balance_warnings(*counts)
    assert warnings == cfg.label_balance_warnings(*counts)
    assert bool(warnings) is warned
    if warned:
        assert "[1, 4/3]" in warnings[0] and "desirable_weight" in warnings[0]
