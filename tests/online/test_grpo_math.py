"""GRPO's group advantages, the k3 KL and the (Dr.) GRPO token loss, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alignkit.online.grpo import group_advantages, grpo_token_loss, k3_kl

FAST = settings(max_examples=50, deadline=None)
finite = st.floats(-20.0, 20.0, width=32)


# --- group advantages ---------------------------------------------------------------------------------------


def test_group_advantages_hand_worked_sample_std():
    # Group [1, 3]: mean 2, deviations -1, +1; sample std sqrt((1 + 1) / (2 - 1)) = sqrt 2 (population: 1).
    # Group [5, 5]: constant, std 0 -> advantage 0, not NaN (even with eps = 0).
    adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), group_size=2, eps=0.0)
    s = math.sqrt(2)
    assert torch.allclose(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]))
    # G = 3, [1, 2, 6]: mean 3, deviations [-2, -1, 3], sample var (4 + 1 + 9) / 2 = 7, eps 1e-4.
    adv3 = group_advantages(torch.tensor([1.0, 2.0, 6.0]), group_size=3)
    d = math.sqrt(7) + 1e-4
    assert torch.allclose(adv3, torch.tensor([-2 / d, -1 / d, 3 / d]))


def test_constant_group_gives_zero_with_the_default_eps():
    adv = group_advantages(torch.tensor([0.7, 0.7, 0.7, 1.0, 0.0, 1.0]), group_size=3)
    assert torch.all(torch.isfinite(adv))
    assert torch.all(adv[:3] == 0)


def test_dr_grpo_advantages_are_reward_minus_group_mean():
    # Groups [1, 3] and [0, 10]: means 2 and 5, no std division.
    adv = group_advantages(torch.tensor([1.0, 3.0, 0.0, 10.0]), group_size=2, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -5.0, 5.0]))


def test_group_of_one_has_zero_advantage():
    assert torch.all(group_advantages(torch.tensor([3.0, -1.0]), group_size=1) == 0)


def test_group_advantages_validate():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)
    with pytest.raises(ValueError, match=r"\(P \* G,\)"):
        group_advantages(torch.zeros(2, 2), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(2), group_size=0)


@FAST
@given(st.lists(finite, min_size=6, max_size=6), st.sampled_from([2, 3, 6]))
@example([0.0, 0.0, 0.0, 5.890625, 5.890625, 5.8906984], 3)  # near-equal rewards: float32 centring summed to 3e-3
def test_group_advantages_sum_to_zero_in_each_group(rewards, group_size):
    adv = group_advantages(torch.tensor(rewards), group_size=group_size).view(-1, group_size)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(adv.shape[0]), atol=1e-3)


# --- k3 -----------------------------------------------------------------------------------------------------


def test_k3_hand_worked():
    # p = 0.5 under pi, 0.25 under ref: ref - logp = -log 2, k3 = 1/2 + log 2 - 1 = log 2 - 0.5.
    k3 = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert float(k3) == pytest.approx(math.log(2) - 0.5)


def test_k3_is_accurate_for_small_differences():
    # d = ref - logp = 1e-3: k3 = e^d - d - 1 = d^2/2 + d^3/6 + ... = 5.0016675e-7; exp(d) - d - 1 in float32
    # would be off by ~1e-7 (even negative for d ~ 1e-6).
    k3 = k3_kl(torch.tensor([0.0]), torch.tensor([1e-3]))
    assert float(k3) == pytest.approx(5.0016675e-7, rel=1e-4)


@FAST
@given(finite, finite)
def test_k3_is_non_negative_and_zero_when_equal(logp, ref):
    assert float(k3_kl(torch.tensor([logp]), torch.tensor([ref]))) >= 0.0
    assert float(k3_kl(torch.tensor([logp]), torch.tensor([logp]))) == 0.0


def test_k3_mean_estimates_the_kl():
    # Sampling from pi = softmax([0, 1, 2]) and averaging k3 approaches KL(pi || ref), ref uniform.
    g = torch.Generator().manual_seed(0)
    log_pi = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), dim=0)
    log_ref = torch.full((3,), -math.log(3))
    draws = torch.multinomial(log_pi.exp(), 200_000, replacement=True, generator=g)
    estimate = float(k3_kl(log_pi[draws], log_ref[draws]).mean())
    exact = float((log_pi.exp() * (log_pi - log_ref)).sum())
    assert estimate == pytest.approx(exact, abs=3e-3)


# --- the token loss ----------------------------------------------------------------------------------------


def test_grpo_loss_at_ratio_one_without_kl_is_minus_the_mean_advantage():
    # Ratio 1 everywhere, kl_coef 0: every token of sequence i costs -A_i, so each sequence's token mean is
    # -A_i and the loss is -mean(A) = -(1 - 2 + 4) / 3 = -1, whatever the lengths.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 7.0], [-2.0, 0.0, 0.0]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 4.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    loss, stats = grpo_token_loss(logp, logp.detach(), None, adv, mask, clip_eps=0.2, kl_coef=0.0)
    assert float(loss.detach()) == pytest.approx(-1.0)
    assert float(stats.clip_fraction) == 0.0 and float(stats.kl) == 0.0
    assert float(stats.ratio_mean) == pytest.approx(1.0)
    assert int(stats.num_tokens) == 6
    # Gradient per token: -A_i / |o_i| / 3.
    loss.backward()
    assert logp.grad is not None
    expected = torch.tensor([[-1 / 9] * 3, [2 / 6, 2 / 6, 0.0], [-4 / 3, 0.0, 0.0]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_dr_grpo_aggregation_sums_tokens_over_a_constant():
    # Same batch, Dr. GRPO: sequence sums -A_i * |o_i| = [-3, 4, -4], over L = T = 3, mean over 3 sequences:
    # (-3 + 4 - 4) / 3 / 3 = -1/3. With L = 10 (the length budget): -3 / 10 / 3 = -0.1.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 7.0], [-2.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -2.0, 4.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    loss, _ = grpo_token_loss(logp, logp, None, adv, mask, 0.2, 0.0, length_normalise=False)
    assert float(loss) == pytest.approx(-1 / 3)
    loss10, _ = grpo_token_loss(logp, logp, None, adv, mask, 0.2, 0.0, length_normalise=False,
                                normaliser=10.0)
    assert float(loss10) == pytest.approx(-0.1)
    # Micro-batches with num_sequences = 3 add up to the batch.
    parts = [grpo_token_loss(logp[s], logp[s], None, adv[s], mask[s], 0.2, 0.0, num_sequences=3)[0]
             for s in (slice(0, 1), slice(1, 3))]
    whole, _ = grpo_token_loss(logp, logp, None, adv, mask, 0.2, 0.0)
    assert float(parts[0] + parts[1]) == pytest.approx(float(whole))


def test_grpo_loss_clipping_and_kl_hand_worked():
    # One sequence of two tokens, A = +1, eps = 0.2, kl_coef = 0.1:
    #   token 0: rho 1.5 -> -min(1.5, 1.2) = -1.2 (clipped); logp = log 0.5, ref = log 0.25: k3 = log 2 - 0.5
    #   token 1: rho 1.0 -> -1.0;                         logp = ref: k3 = 0
    # length-normalised: (-1.2 + 0.1 (log 2 - 0.5) - 1.0) / 2; clip fraction 1/2; kl (log 2 - 0.5) / 2.
    logp = torch.tensor([[math.log(0.5), math.log(0.3)]])
    old = logp - torch.tensor([[math.log(1.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.3)]])
    k3 = math.log(2) - 0.5
    loss, stats = grpo_token_loss(logp, old, ref, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2,
                                  kl_coef=0.1)
    assert float(loss) == pytest.approx((-1.2 + 0.1 * k3 - 1.0) / 2, abs=1e-6)
    assert float(stats.clip_fraction) == pytest.approx(0.5)
    assert float(stats.kl) == pytest.approx(k3 / 2, abs=1e-6)
    assert float(stats.ratio_mean) == pytest.approx(1.25, abs=1e-6)


def test_grpo_padding_is_ignored_even_when_it_holds_junk():
    logp = torch.tensor([[-1.0, float("-inf")]])
    ref = torch.tensor([[-1.0, float("nan")]])
    loss, stats = grpo_token_loss(logp, logp, ref, torch.tensor([2.0]), torch.tensor([[1, 0]]), 0.2, 0.5)
    assert float(loss) == pytest.approx(-2.0)
    assert float(stats.kl) == 0.0


def test_grpo_loss_validates():
    x = torch.zeros(2, 3)
    a = torch.zeros(2)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_token_loss(x, x, None, a, m, 0.2, 0.1)
    with pytest.raises(ValueError, match=r"advantages must be \(B,\)"):
        grpo_token_loss(x, x, x, x, m, 0.2, 0.1)
    with pytest.raises(ValueError, match="length_normalise=False"):
        grpo_token_loss(x, x, x, a, m, 0.2, 0.1, normaliser=5.0)
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_token_loss(x, x, x, a, m, -0.2, 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        grpo_token_loss(x, x, x, a, m, 0.2, -0.1)
