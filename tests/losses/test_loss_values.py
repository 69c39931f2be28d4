"""Hand-worked values for every built-in loss (B = 1 unless noted).

Numbers are chosen so that the sigmoids are simple: σ(0) = 1/2, σ(ln 3) = 3/4, σ(−ln 3) = 1/4,
σ(ln 9) = 9/10, hence −log σ(ln 3) = ln(4/3) and −log σ(−ln 3) = ln 4.
"""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import make_stats

from alignkit.losses import PreferenceStats, get_loss
from alignkit.losses.docs import builtin_losses

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def run(name: str, stats: PreferenceStats, **params):
    spec = get_loss(name)
    return spec(stats, spec.config(**params))


def close(t: torch.Tensor, value: float) -> None:
    torch.testing.assert_close(t, torch.tensor([value]), atol=1e-5, rtol=1e-5)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_dpo_hand_values() -> None:
    """β = 1, chosen log-ratio ln 3, rejected log-ratio 0: h = ln 3, so σ(h) = 3/4.

    dpo    = −log(3/4) = ln(4/3)
    cDPO   = 0.75·ln(4/3) + 0.25·ln 4                         (ε = 0.25)
    robust = [0.75·ln(4/3) + 0.25·log σ(−ln 3)] / 0.5 = 1.5·ln(4/3) − 0.5·ln 4
    rewards = β·log-ratios = ln 3 and 0.
    """
    s = make_stats(pc=-2 + LN3, pr=-2, rc=-2, rr=-2)
    out = run("dpo", s, beta=1.0)
    close(out.losses, math.log(4 / 3))
    close(out.chosen_rewards, LN3)
    close(out.rejected_rewards, 0.0)
    close(run("dpo", s, beta=1.0, label_smoothing=0.25).losses, 0.75 * math.log(4 / 3) + 0.25 * LN4)
    close(run("dpo", s, beta=1.0, label_smoothing=0.25, robust=True).losses, 1.5 * math.log(4 / 3) - 0.5 * LN4)


def test_dpo_is_log2_when_policy_equals_reference() -> None:
    """h = 0, so every smoothing gives (1 − ε)·ln 2 ± ε·ln 2 ... = ln 2 (robust: (1−2ε)ln2/(1−2ε))."""
    s = make_stats(pc=-7.5, pr=-3.25, rc=-7.5, rr=-3.25)
    for params in ({}, {"label_smoothing": 0.2}, {"label_smoothing": 0.2, "robust": True}, {"beta": 3.0}):
        close(run("dpo", s, **params).losses, LN2)


def test_dpop_hand_values() -> None:
    """β = 1, λ = 2. Chosen fell 1 nat below the reference (−3 vs −2): penalty 1; rejected log-ratio 0.

    h = −1 − 0 = −1;  loss = −log σ(1·(−1 − 2·1)) = −log σ(−3) = ln(1 + e³).
    With the chosen above the reference the penalty is 0 and dpop equals dpo: ln(4/3) at h = ln 3.
    """
    out = run("dpop", make_stats(pc=-3, pr=-5, rc=-2, rr=-5), beta=1.0, penalty_weight=2.0)
    close(out.losses, softplus(3.0))
    close(out.metrics["penalty"], 1.0)
    close(run("dpop", make_stats(pc=-2 + LN3, pr=-2, rc=-2, rr=-2), beta=1.0).losses, math.log(4 / 3))


def test_ipo_hand_values() -> None:
    """β = 1/4, so the target is 1/(2β) = 2.

    Chosen: policy −2, reference −4, 2 tokens → summed log-ratio 2, averaged 1.
    Rejected: policy −6, reference −6, 3 tokens → log-ratio 0.
    averaged (default): (1 − 2)² = 1;  summed: (2 − 2)² = 0.  Rewards (averaged): 1/4·1, 0.
    """
    s = make_stats(pc=-2, pr=-6, rc=-4, rr=-6, lc=2, lr=3)
    out = run("ipo", s, beta=0.25)
    close(out.losses, 1.0)
    close(out.chosen_rewards, 0.25)
    close(run("ipo", s, beta=0.25, average_log_prob=False).losses, 0.0)


def test_hinge_hand_values() -> None:
    """β = 1/2: h = 1 gives max(0, 1 − 0.5) = 0.5; h = 4 gives max(0, 1 − 2) = 0."""
    close(run("hinge", make_stats(pc=-1, pr=-2, rc=-1, rr=-1), beta=0.5).losses, 0.5)
    close(run("hinge", make_stats(pc=-1, pr=-5, rc=-1, rr=-1), beta=0.5).losses, 0.0)


def test_slic_hf_hand_values() -> None:
    """δ = 1, λ = 0.1, log π(yw) = −2, log π(yl) = −2.5 (2 and 5 tokens).

    summed:   max(0, 1 + 2 − 2.5) − 0.1·(−2) = 0.5 + 0.2 = 0.7
    averaged: a_w = −1, a_l = −0.5: max(0, 1 + 1 − 0.5) + 0.1·1 = 1.6
    No reference is read: stats without reference log-probs work.
    """
    s = make_stats(pc=-2, pr=-2.5, lc=2, lr=5)
    out = run("slic_hf", s, delta=1.0, sft_weight=0.1)
    close(out.losses, 0.7)
    close(out.metrics["hinge"], 0.5)
    close(out.chosen_rewards, -2.0)
    close(run("slic_hf", s, delta=1.0, sft_weight=0.1, average_log_prob=True).losses, 1.6)


def test_simpo_hand_values() -> None:
    """β = 2, γ/β = 0.5 → γ = 1. a_w = −2/4 = −0.5, a_l = −3/2 = −1.5.

    loss = −log σ(2·(−0.5 + 1.5) − 1) = −log σ(1) = ln(1 + e⁻¹); rewards β·a = −1, −3.
    With γ = 2 given directly: −log σ(0) = ln 2.
    """
    s = make_stats(pc=-2, pr=-3, lc=4, lr=2)
    out = run("simpo", s, beta=2.0, gamma_beta_ratio=0.5)
    close(out.losses, softplus(-1.0))
    close(out.chosen_rewards, -1.0)
    close(out.rejected_rewards, -3.0)
    close(run("simpo", s, beta=2.0, gamma=2.0).losses, LN2)


def test_orpo_hand_values() -> None:
    """λ = 0.1. a_w = −2 ln 2 / 2 = −ln 2 (p = 1/2, odds 1, log-odds 0);
    a_l = −ln 4 (p = 1/4, odds 1/3, log-odds −ln 3). Log-odds ratio = ln 3.

    loss = ln 2 − 0.1·log σ(ln 3) = ln 2 + 0.1·ln(4/3); rewards λ·a = −0.1·ln 2, −0.1·ln 4.
    """
    out = run("orpo", make_stats(pc=-2 * LN2, pr=-LN4, lc=2, lr=1), odds_ratio_weight=0.1)
    close(out.losses, LN2 + 0.1 * math.log(4 / 3))
    close(out.metrics["log_odds_ratio"], LN3)
    close(out.metrics["nll"], LN2)
    close(out.chosen_rewards, -0.1 * LN2)


def test_orpo_finite_at_probability_one() -> None:
    """a_w = 0 exactly (log(1 − e⁰) = −∞ unguarded): the loss and gradients stay finite."""
    for pr in (0.0, -1.0, -1e4):
        s = make_stats(pc=0.0, pr=pr, lc=3, lr=1)
        s.policy_chosen_logps.requires_grad_(True)
        s.policy_rejected_logps.requires_grad_(True)
        out = get_loss("orpo")(s)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all()
        assert torch.isfinite(s.policy_chosen_logps.grad).all()
        assert torch.isfinite(s.policy_rejected_logps.grad).all()


def test_cpo_hand_values() -> None:
    """β = 1/2, w = 1: log π(yw) = −2 over 4 tokens, log π(yl) = −4.

    loss = −log σ(0.5·(−2 + 4)) + 2/4 = ln(1 + e⁻¹) + 0.5; rewards β·log π = −1, −2.
    """
    out = run("cpo", make_stats(pc=-2, pr=-4, lc=4, lr=1), beta=0.5, sft_weight=1.0)
    close(out.losses, softplus(-1.0) + 0.5)
    close(out.chosen_rewards, -1.0)
    close(out.rejected_rewards, -2.0)


def test_sft_hand_values() -> None:
    """log π(yw) = −6 over 3 tokens: loss 2; rewards are per-token means −2 and −1 (−4 over 4)."""
    out = run("sft", make_stats(pc=-6, pr=-4, lc=3, lr=4))
    close(out.losses, 2.0)
    close(out.chosen_rewards, -2.0)
    close(out.rejected_rewards, -1.0)
    only_chosen = PreferenceStats(policy_chosen_logps=torch.tensor([-6.0]), chosen_lengths=torch.tensor([3.0]))
    close(get_loss("sft")(only_chosen).rejected_rewards, 0.0)


def test_reward_bt_hand_values() -> None:
    """r_w = ln 3, r_l = 0: −log σ(ln 3) = ln(4/3); + c·(ln 3)² with c = 1/2; margin ln 3 → ln 2."""
    s = PreferenceStats(chosen_scores=torch.tensor([LN3]), rejected_scores=torch.tensor([0.0]))
    close(run("reward_bt", s).losses, math.log(4 / 3))
    close(run("reward_bt", s, center_coefficient=0.5).losses, math.log(4 / 3) + 0.5 * LN3**2)
    close(run("reward_bt", s, margin=LN3).losses, LN2)
    close(run("reward_bt", s).chosen_rewards, LN3)


def test_reward_kway_hand_values() -> None:
    """Scores (0, ln 2, ln 5): exp = (1, 2, 5), sum 8; best = 2 → −log(5/8) = ln(8/5).

    Rewards: chosen ln 5, rejected mean(0, ln 2) = ln 2 / 2.
    """
    s = PreferenceStats(scores=torch.tensor([[0.0, LN2, math.log(5)]]), best_index=torch.tensor([2]))
    out = run("reward_kway", s)
    close(out.losses, math.log(8 / 5))
    close(out.chosen_rewards, math.log(5))
    close(out.rejected_rewards, LN2 / 2)


def test_reward_kway_rejects_one_candidate() -> None:
    s = PreferenceStats(scores=torch.zeros(2, 1), best_index=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"K >= 2"):
        get_loss("reward_kway")(s)


def test_nca_pair_hand_values() -> None:
    """β = 1, r_w = ln 3, r_l = −ln 3.

    −log σ(ln 3) − ½·log σ(−ln 3) − ½·log σ(ln 3) = ln(4/3) + ½·ln 4 + ½·ln(4/3) = 1.5·ln(4/3) + ln 2.
    """
    out = run("nca_pair", make_stats(pc=LN3 - 1, pr=-LN3 - 1, rc=-1, rr=-1), beta=1.0)
    close(out.losses, 1.5 * math.log(4 / 3) + LN2)


def test_bco_pair_hand_values() -> None:
    """β = 1, r_w = ln 3, r_l = −ln 3.

    δ = 0:    −log σ(ln 3) − log σ(ln 3) = 2·ln(4/3)
    δ = ln 3: −log σ(0) − log σ(ln 9) = ln 2 + ln(10/9)
    """
    s = make_stats(pc=LN3 - 1, pr=-LN3 - 1, rc=-1, rr=-1)
    close(run("bco_pair", s, beta=1.0).losses, 2 * math.log(4 / 3))
    close(run("bco_pair", s, beta=1.0, delta=LN3).losses, LN2 + math.log(10 / 9))


def test_apo_hand_values() -> None:
    """β = 1, r_w = ln 3 (σ = 3/4), r_l = −ln 3 (σ = 1/4), r_w − r_l = ln 9 (σ = 9/10).

    apo_zero = 1 − 3/4 + 1/4 = 0.5;  apo_down = 3/4 + 1 − 9/10 = 0.85.
    """
    s = make_stats(pc=LN3 - 1, pr=-LN3 - 1, rc=-1, rr=-1)
    close(run("apo_zero", s, beta=1.0).losses, 0.5)
    close(run("apo_down", s, beta=1.0).losses, 0.85)


def test_sppo_hard_hand_values() -> None:
    """β = 1/4 → targets ±2; log-ratios 1 and −1: (1 − 2)² + (−1 + 2)² = 2."""
    close(run("sppo_hard", make_stats(pc=-1, pr=-3, rc=-2, rr=-2), beta=0.25).losses, 2.0)


def test_exo_pair_hand_values() -> None:
    """β = 1, ε = 1/4.

    β·h = ln 3 → p = 3/4 = 1 − ε: the KL is 0.
    β·h = 0 → p = 1/2: ½·ln((1/2)/(3/4)) + ½·ln((1/2)/(1/4)) = ½·ln(2/3) + ½·ln 2 = ½·ln(4/3).
    """
    close(run("exo_pair", make_stats(pc=LN3 - 2, pr=-2, rc=-2, rr=-2), beta=1.0, epsilon=0.25).losses, 0.0)
    close(run("exo_pair", make_stats(pc=-2, pr=-2, rc=-2, rr=-2), beta=1.0, epsilon=0.25).losses, 0.5 * math.log(4 / 3))


def test_discopop_hand_values() -> None:
    """β = 1.

    z = 0, any τ: g = 1/2 → ½·ln 2 + ½·e⁰ = (ln 2 + 1)/2.
    z = ln 3, τ = 1: g = 3/4 → ¼·ln(4/3) + ¾·(1/3) = ¼·ln(4/3) + ¼.
    """
    close(run("discopop", make_stats(pc=-2, pr=-2, rc=-2, rr=-2), beta=1.0).losses, (LN2 + 1) / 2)
    s = make_stats(pc=LN3 - 2, pr=-2, rc=-2, rr=-2)
    close(run("discopop", s, beta=1.0, tau=1.0).losses, 0.25 * math.log(4 / 3) + 0.25)



def test_dpo_reference_free_hand_values() -> None:
    """β = 1, log π(yw) = −2 + ln 3, log π(yl) = −2, reference log-probs equal to the policy's.

    plain dpo: h = 0 → ln 2.
    reference_free: log π_ref := 0, h = ln 3 − 0 = ln 3 → −log σ(ln 3) = ln(4/3), whatever the reference;
    rewards β·log π = ln 3 − 2 and −2. cDPO (ε = 1/4) applies on top: 0.75·ln(4/3) + 0.25·ln 4.
    """
    s = make_stats(pc=-2 + LN3, pr=-2, rc=-2 + LN3, rr=-2)
    close(run("dpo", s, beta=1.0).losses, LN2)
    out = run("dpo", s, beta=1.0, reference_free=True)
    close(out.losses, math.log(4 / 3))
    close(out.chosen_rewards, LN3 - 2)
    close(out.rejected_rewards, -2.0)
    close(run("dpo", make_stats(pc=-2 + LN3, pr=-2), beta=1.0, reference_free=True).losses, math.log(4 / 3))
    close(run("dpo", s, beta=1.0, reference_free=True, label_smoothing=0.25).losses,
          0.75 * math.log(4 / 3) + 0.25 * LN4)


def test_simpo_variant_hand_values() -> None:
    """β = 2, a_w = −2/4 = −0.5, a_l = −3/2 = −1.5, so β·(a_w − a_l) = 2 and z = 2 − γ.

    sigmoid, ε = 1/4, γ = 2 − ln 3: z = ln 3 → 0.75·(−log σ(ln 3)) + 0.25·(−log σ(−ln 3))
                                             = 0.75·ln(4/3) + 0.25·ln 4
    hinge, γ = 1.5: z = 0.5 → max(0, 1 − 0.5) = 0.5;  γ = 0.5: z = 1.5 → 0;  γ = 2: z = 0 → 1.
    Rewards stay β·a = −1, −3 in every variant.
    """
    s = make_stats(pc=-2, pr=-3, lc=4, lr=2)
    smoothed = run("simpo", s, beta=2.0, gamma=2 - LN3, label_smoothing=0.25)
    close(smoothed.losses, 0.75 * math.log(4 / 3) + 0.25 * LN4)
    close(run("simpo", s, beta=2.0, gamma=2 - LN3).losses, math.log(4 / 3))  # ε = 0: the paper's loss
    hinge = run("simpo", s, beta=2.0, gamma=1.5, loss_type="hinge")
    close(hinge.losses, 0.5)
    close(hinge.chosen_rewards, -1.0)
    close(hinge.rejected_rewards, -3.0)
    close(run("simpo", s, beta=2.0, gamma=0.5, loss_type="hinge").losses, 0.0)
    close(run("simpo", s, beta=2.0, gamma=2.0, loss_type="hinge").losses, 1.0)
    # γ/β = 0.75 is γ = 1.5: the hinge reads the same margin however it is given.
    close(run("simpo", s, beta=2.0, gamma_beta_ratio=0.75, loss_type="hinge").losses, 0.5)

HAND_WORKED = {
    "apo_down", "apo_zero", "bco_pair", "cpo", "discopop", "dpo", "dpop", "exo_pair", "hinge", "ipo",
    "nca_pair", "orpo", "reward_bt", "reward_kway", "sft", "simpo", "slic_hf", "sppo_hard",
    "bco", "kto",  # tests/losses/test_unpaired_losses.py
}


def test_every_builtin_loss_has_hand_worked_values() -> None:
    """Adding a built-in loss means adding its hand-worked test above (and its name here)."""
    missing = {s.name for s in builtin_losses()} - HAND_WORKED
    assert not missing, f"built-in losses without a hand-worked test: {sorted(missing)}"


@pytest.mark.parametrize("spec", builtin_losses(), ids=lambda s: s.name)
def test_builtin_docstrings_state_formula_and_paper(spec) -> None:
    doc = spec.fn.__doc__ or ""
    assert "Formula::" in doc, f"{spec.name}: docstring needs a 'Formula::' block"
    assert "Reference" in doc, f"{spec.name}: docstring needs the paper it comes from"
