"""Properties of particular losses, stated by their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_cases import logps_stats, single_thread

from alignkit.losses import PreferenceStats, get_loss

FAST = settings(max_examples=30, deadline=None)
finite = st.floats(-50.0, 50.0, width=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def margin_stats(h: torch.Tensor) -> PreferenceStats:
    """Statistics whose log-ratio margin is exactly h (B,): chosen log-ratio h, rejected 0."""
    zeros = torch.zeros_like(h)
    ones = torch.ones_like(h)
    return PreferenceStats(
        policy_chosen_logps=h - 5, policy_rejected_logps=zeros - 5, chosen_lengths=ones, rejected_lengths=ones,
        reference_chosen_logps=zeros - 5, reference_rejected_logps=zeros - 5,
    )


def run(name: str, stats: PreferenceStats, **params):
    spec = get_loss(name)
    return spec(stats, spec.config(**params))


@pytest.mark.parametrize(
    "name, params, h_max",
    [
        ("dpo", {}, 1e3),
        ("dpo", {"label_smoothing": 0.3}, 10 * math.log(0.7 / 0.3)),  # cDPO: below its minimum
        ("dpo", {"label_smoothing": 0.3, "robust": True}, 1e3),
        ("hinge", {}, 1e3),
        ("dpop", {}, 1e3),
        ("bco_pair", {}, 1e3),
        ("apo_zero", {}, 1e3),
        ("ipo", {"average_log_prob": False}, 5.0),  # the near side of the target 1/(2β) = 5
        ("exo_pair", {"epsilon": 0.01}, 10 * math.log(99)),  # below the minimum β·h = log((1−ε)/ε)
    ],
)
def test_non_increasing_in_the_margin(name: str, params: dict, h_max: float) -> None:
    """Where its formula says so, a larger margin h never costs more."""
    h = torch.linspace(-1e3, h_max, 4001)
    losses = run(name, margin_stats(h), **params).losses
    steps = losses[1:] - losses[:-1]
    assert (steps <= 1e-5 * losses.abs().clamp(min=1)[1:]).all(), f"{name} increases with h"


def test_cdpo_has_its_minimum_at_the_soft_label() -> None:
    """cDPO is cross-entropy against the soft label 1 − ε: minimum at β·h = log((1 − ε)/ε), unlike
    robust DPO, which keeps decreasing."""
    eps, beta = 0.3, 0.1
    h_star = math.log((1 - eps) / eps) / beta
    h = torch.tensor([h_star - 1, h_star, h_star + 1])
    cdpo = run("dpo", margin_stats(h), label_smoothing=eps).losses
    robust = run("dpo", margin_stats(h), label_smoothing=eps, robust=True).losses
    assert cdpo[1] < cdpo[0] and cdpo[1] < cdpo[2]
    assert robust[0] > robust[1] > robust[2]


def test_ipo_rises_past_its_target() -> None:
    """Past h = 1/(2β) the IPO loss grows again (the reason it is exempt from the direction test)."""
    losses = run("ipo", margin_stats(torch.tensor([5.0, 6.0, 9.0])), average_log_prob=False).losses
    assert losses[0] == 0 and losses[1] < losses[2]


def test_nca_pair_pushes_chosen_only_below_log2() -> None:
    """d loss/d r_w = −σ(−r_w) + ½σ(r_w) changes sign at r_w = ln 2."""
    for r_w, sign in ((math.log(2) - 0.1, -1), (math.log(2) + 0.1, 1)):
        s = margin_stats(torch.tensor([r_w / 0.1]))
        s.policy_chosen_logps.requires_grad_(True)
        run("nca_pair", s).losses.sum().backward()
        assert torch.sign(s.policy_chosen_logps.grad).item() == sign


@FAST
@given(stats=logps_stats())
def test_cdpo_and_robust_at_zero_smoothing_equal_dpo(stats: PreferenceStats) -> None:
    base = run("dpo", stats).losses
    torch.testing.assert_close(run("dpo", stats, label_smoothing=0.0).losses, base)
    torch.testing.assert_close(run("dpo", stats, label_smoothing=0.0, robust=True).losses, base)


@FAST
@given(stats=logps_stats(), beta=st.floats(0.01, 10.0))
def test_dpo_is_log2_when_policy_equals_reference(stats: PreferenceStats, beta: float) -> None:
    same = PreferenceStats(**{**vars(stats), "reference_chosen_logps": stats.policy_chosen_logps,
                              "reference_rejected_logps": stats.policy_rejected_logps})
    out = run("dpo", same, beta=beta)
    torch.testing.assert_close(out.losses, torch.full_like(out.losses, math.log(2)))


@FAST
@given(stats=logps_stats(), scale=st.integers(2, 8))
def test_simpo_invariant_to_scaling_logps_and_lengths_together(stats: PreferenceStats, scale: int) -> None:
    """SimPO reads log π(y)/|y| only, so scaling both by k changes nothing."""
    scaled = PreferenceStats(**{
        **vars(stats),
        "policy_chosen_logps": stats.policy_chosen_logps * scale,
        "policy_rejected_logps": stats.policy_rejected_logps * scale,
        "chosen_lengths": stats.chosen_lengths * scale,
        "rejected_lengths": stats.rejected_lengths * scale,
    })
    torch.testing.assert_close(run("simpo", scaled).losses, run("simpo", stats).losses)


def test_simpo_margin_parameters() -> None:
    """γ comes from gamma when given, else β·gamma_beta_ratio; giving both is an error."""
    cfg = get_loss("simpo").config
    assert cfg().effective_gamma == pytest.approx(1.0)
    assert cfg(beta=2.5, gamma_beta_ratio=0.4).effective_gamma == pytest.approx(1.0)
    assert cfg(beta=2.5, gamma=0.3).effective_gamma == pytest.approx(0.3)
    with pytest.raises(ValueError, match="either gamma or gamma_beta_ratio"):
        cfg(gamma=1.0, gamma_beta_ratio=0.5)


@FAST
@given(w=st.lists(finite, min_size=1, max_size=4), data=st.data())
def test_reward_kway_with_two_candidates_equals_reward_bt(w: list[float], data: st.DataObject) -> None:
    rejected = torch.tensor(data.draw(st.lists(finite, min_size=len(w), max_size=len(w))))
    chosen = torch.tensor(w)
    bt = run("reward_bt", PreferenceStats(chosen_scores=chosen, rejected_scores=rejected))
    # Put the chosen score at a random position among the two.
    first = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(w), max_size=len(w))))
    scores = torch.stack([torch.where(first, chosen, rejected), torch.where(first, rejected, chosen)], dim=1)
    kway = run("reward_kway", PreferenceStats(scores=scores, best_index=(~first).long()))
    torch.testing.assert_close(kway.losses, bt.losses)
    torch.testing.assert_close(kway.chosen_rewards, bt.chosen_rewards)
    torch.testing.assert_close(kway.rejected_rewards, bt.rejected_rewards)


@FAST
@given(w=finite, l_=finite, shift=finite, margin=st.floats(-3, 3))
def test_reward_bt_invariant_to_a_shared_shift_without_centering(
    w: float, l_: float, shift: float, margin: float
) -> None:
    """Bradley–Terry reads r_w − r_l only (c = 0); centring (c > 0) breaks this on purpose."""
    def loss(c: float, d: float) -> torch.Tensor:
        s = PreferenceStats(chosen_scores=torch.tensor([w + d]), rejected_scores=torch.tensor([l_ + d]))
        return run("reward_bt", s, margin=margin, center_coefficient=c).losses
    torch.testing.assert_close(loss(0.0, shift), loss(0.0, 0.0), atol=1e-4, rtol=1e-4)
    if abs(shift) > 1 and abs(w + l_ + shift) > abs(w + l_) + 1:
        assert loss(0.1, shift) > loss(0.1, 0.0)


@FAST
@given(w=st.lists(finite, min_size=3, max_size=3), shift=finite)
def test_reward_kway_invariant_to_a_shared_shift(w: list[float], shift: float) -> None:
    scores = torch.tensor([w])
    best = torch.tensor([1])
    a = run("reward_kway", PreferenceStats(scores=scores, best_index=best)).losses
    b = run("reward_kway", PreferenceStats(scores=scores + shift, best_index=best)).losses
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@FAST
@given(stats=logps_stats())
def test_orpo_finite_when_average_logprob_is_zero(stats: PreferenceStats) -> None:
    zero = PreferenceStats(**{**vars(stats), "policy_chosen_logps": torch.zeros_like(stats.policy_chosen_logps)})
    zero.policy_chosen_logps.requires_grad_(True)
    out = get_loss("orpo")(zero)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(zero.policy_chosen_logps.grad).all()
