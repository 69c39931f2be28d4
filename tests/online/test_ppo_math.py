"""PPO's per-token rewards, GAE, whitening, the clipped policy and value losses, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.online.ppo import (
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    masked_mean,
    masked_moments,
    token_rewards,
    whiten,
)

FAST = settings(max_examples=30, deadline=None)

# The 3-token episode used below: rewards r, values V.
R3 = torch.tensor([[0.5, -0.2, 1.0]])
V3 = torch.tensor([[0.4, 0.3, 0.6]])
M3 = torch.ones(1, 3, dtype=torch.bool)


def close(a: torch.Tensor, b: list[list[float]] | list[float]) -> bool:
    return torch.allclose(a, torch.tensor(b), atol=1e-6)


# --- token rewards ------------------------------------------------------------------------------------


def test_token_rewards_put_the_sequence_reward_at_the_last_real_token():
    # beta = 0.5, KL [0.2, -0.4, 0.6, 9 (padding)]: -beta * KL = [-0.1, 0.2, -0.3, 0]; row 0 has 3 real
    # tokens, so its reward 2 lands on column 2: -0.3 + 2 = 1.7.
    # Row 1 has 1 real token: -0.5 * 1 + (-1) = -1.5.
    kl = torch.tensor([[0.2, -0.4, 0.6, 9.0], [1.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    r = token_rewards(kl, torch.tensor([2.0, -1.0]), mask, beta=0.5)
    assert close(r, [[-0.1, 0.2, 1.7, 0.0], [-1.5, 0.0, 0.0, 0.0]])
    # beta = 0: only the sequence rewards, at the last real tokens.
    r0 = token_rewards(kl, torch.tensor([2.0, -1.0]), mask, beta=0.0)
    assert close(r0, [[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])


def test_token_rewards_refuse_bad_masks():
    kl = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="right-padded"):
        token_rewards(kl, torch.ones(1), torch.tensor([[1, 0, 1]]), beta=0.1)
    with pytest.raises(ValueError, match="at least one real token"):
        token_rewards(kl, torch.ones(1), torch.tensor([[0, 0, 0]]), beta=0.1)
    with pytest.raises(ValueError, match="0 and 1"):
        token_rewards(kl, torch.ones(1), torch.tensor([[1, 2, 0]]), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        token_rewards(kl, torch.ones(1), torch.ones(1, 3), beta=-0.1)


# --- GAE ------------------------------------------------------------------------------------------------


def test_gae_hand_worked_gamma_09_lambda_08():
    # gamma * lam = 0.72; V after the last token is 0.
    # t=2: delta = 1.0 + 0.9*0   - 0.6 = 0.4             A2 = 0.4
    # t=1: delta = -0.2 + 0.9*0.6 - 0.3 = 0.04            A1 = 0.04 + 0.72*0.4   = 0.328
    # t=0: delta = 0.5 + 0.9*0.3 - 0.4 = 0.37             A0 = 0.37 + 0.72*0.328 = 0.60616
    # returns = A + V = [1.00616, 0.628, 1.0]
    adv, ret = gae(R3, V3, M3, gamma=0.9, lam=0.8)
    assert close(adv, [[0.60616, 0.328, 0.4]])
    assert close(ret, [[1.00616, 0.628, 1.0]])


def test_gae_lambda_0_is_the_one_step_td_error():
    # gamma = 1, lam = 0: A_t = r_t + V_{t+1} - V_t = [0.5+0.3-0.4, -0.2+0.6-0.3, 1.0+0-0.6] = [0.4, 0.1, 0.4]
    adv, ret = gae(R3, V3, M3, gamma=1.0, lam=0.0)
    assert close(adv, [[0.4, 0.1, 0.4]])
    assert close(ret, [[0.8, 0.4, 1.0]])  # r_t + V_{t+1}


def test_gae_lambda_1_is_the_monte_carlo_return_minus_value():
    # gamma = 0.9, lam = 1: G2 = 1.0, G1 = -0.2 + 0.9*1.0 = 0.7, G0 = 0.5 + 0.9*0.7 = 1.13;
    # A = G - V = [1.13-0.4, 0.7-0.3, 1.0-0.6] = [0.73, 0.4, 0.4]; returns = G whatever V is.
    adv, ret = gae(R3, V3, M3, gamma=0.9, lam=1.0)
    assert close(adv, [[0.73, 0.4, 0.4]])
    assert close(ret, [[1.13, 0.7, 1.0]])
    _, ret_other_v = gae(R3, torch.tensor([[5.0, -3.0, 2.0]]), M3, gamma=0.9, lam=1.0)
    assert close(ret_other_v, [[1.13, 0.7, 1.0]])


def test_gae_right_padded_row_ends_at_its_last_real_token():
    # Row 1 is the first two tokens of the example followed by padding holding junk (V = 99, r = 7, even NaN).
    # Its episode ends at t=1, so V_2 counts as 0: t=1: delta = -0.2 - 0.3 = -0.5, A1 = -0.5;
    # t=0: delta = 0.5 + 0.9*0.3 - 0.4 = 0.37, A0 = 0.37 + 0.72*(-0.5) = 0.01. Row 0 is the full example.
    rewards = torch.tensor([[0.5, -0.2, 1.0], [0.5, -0.2, 7.0]])
    values = torch.tensor([[0.4, 0.3, 0.6], [0.4, 0.3, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert close(adv, [[0.60616, 0.328, 0.4], [0.01, -0.5, 0.0]])
    assert close(ret, [[1.00616, 0.628, 1.0], [0.41, -0.2, 0.0]])
    # The same row alone, unpadded, gives the same numbers.
    adv_alone, _ = gae(rewards[1:, :2], values[1:, :2], mask[1:, :2], gamma=0.9, lam=0.8)
    assert torch.allclose(adv_alone, adv[1:, :2])


def test_gae_refuses_gaps_and_bad_coefficients():
    with pytest.raises(ValueError, match="right-padded"):
        gae(R3, V3, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="right-padded"):
        gae(R3, V3, torch.tensor([[0, 1, 1]]), gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="gamma"):
        gae(R3, V3, M3, gamma=1.5, lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        gae(R3, V3, M3, gamma=0.9, lam=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        gae(R3, V3[:, :2], M3, gamma=0.9, lam=0.8)


@FAST
@given(st.integers(1, 6), st.integers(0, 6), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_gae_matches_the_sum_of_discounted_td_errors(length, pad, gamma, lam, seed):
    # A_t = sum_{l >= 0} (gamma*lam)^l delta_{t+l}, written out term by term.
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(1, length + pad, generator=g)
    v = torch.randn(1, length + pad, generator=g)
    mask = torch.tensor([[1] * length + [0] * pad])
    adv, ret = gae(r, v, mask, gamma=gamma, lam=lam)
    vals = v[0, :length].tolist() + [0.0]
    deltas = [float(r[0, t]) + gamma * vals[t + 1] - vals[t] for t in range(length)]
    expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t)) for t in range(length)]
    assert torch.allclose(adv[0, :length], torch.tensor(expected), atol=1e-4)
    assert torch.all(adv[0, length:] == 0) and torch.all(ret[0, length:] == 0)


# --- whitening -------------------------------------------------------------------------------------------


def test_masked_whitening_hand_worked():
    # Real values [1, 2, 3, 4]: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5, unbiased var 5/3.
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    s = math.sqrt(5 / 3)
    w = whiten(x, mask, eps=0.0)
    assert close(w, [[-1.5 / s, -0.5 / s, 0.0], [0.5 / s, 1.5 / s, 0.0]])
    # Biased variance: 5/4.
    wb = whiten(x, mask, unbiased=False, eps=0.0)
    assert close(wb, [[-1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25), 0.0],
                      [0.5 / math.sqrt(1.25), 1.5 / math.sqrt(1.25), 0.0]])
    # shift_mean=False: scaled, mean put back (2.5).
    ws = whiten(x, mask, shift_mean=False, eps=0.0)
    assert close(ws, [[-1.5 / s + 2.5, -0.5 / s + 2.5, 0.0], [0.5 / s + 2.5, 1.5 / s + 2.5, 0.0]])
    assert masked_moments(x, mask) == (10.0, 30.0, 4.0)  # 1+2+3+4, 1+4+9+16, 4


def test_masked_whitening_equals_the_unmasked_formula_on_the_real_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6], dtype=torch.bool)
    real = x[mask]
    expected = (real - real.mean()) / torch.sqrt(real.var() + 1e-8)  # torch.var: unbiased
    w = whiten(x, mask)
    assert torch.allclose(w[mask], expected, atol=1e-6)
    assert torch.all(w[~mask] == 0)


def test_whitening_from_all_reduced_moments_equals_whitening_the_whole_batch():
    # Two "processes" with different shapes of padding: summing their moments and whitening each share
    # gives what one process whitening the concatenated batch gives.
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, generator=g) * 3 + 1, torch.randn(2, 5, generator=g) - 2
    mask_a = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0]])
    mask_b = torch.tensor([[1] * 1 + [0] * 4, [1] * 5])
    moments = tuple(p + q for p, q in zip(masked_moments(a, mask_a), masked_moments(b, mask_b), strict=True))
    assert len(moments) == 3
    together = whiten(torch.cat([a, b]), torch.cat([mask_a, mask_b]))
    shared = torch.cat([whiten(a, mask_a, moments=moments), whiten(b, mask_b, moments=moments)])
    assert torch.allclose(shared, together, atol=1e-6)
    # Their own moments would not: the shares have different means.
    assert not torch.allclose(whiten(a, mask_a), together[:3], atol=1e-3)


def test_whitening_needs_enough_real_positions():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError, match="at least 1"):
        whiten(torch.ones(1, 3), torch.zeros(1, 3), unbiased=False)
    assert close(whiten(torch.tensor([[5.0]]), torch.ones(1, 1), unbiased=False), [[0.0]])


# --- clipped surrogate ------------------------------------------------------------------------------------


def test_clipped_surrogate_at_hand_picked_ratios():
    # eps = 0.2, so clip(rho) to [0.8, 1.2]. Per token: -A*rho vs -A*clip(rho), the max:
    #   rho 0.5, A +1: -0.5 vs -0.8 -> -0.5 (unclipped)
    #   rho 0.5, A -1:  0.5 vs  0.8 ->  0.8 (clipped)
    #   rho 1.5, A +1: -1.5 vs -1.2 -> -1.2 (clipped)
    #   rho 1.5, A -1:  1.5 vs  1.2 ->  1.5 (unclipped)
    #   rho 1.1, A +2: -2.2 vs -2.2 -> -2.2 (inside: neither is larger, not counted as clipped)
    #   padding: rho e^5, A 100, ignored
    # loss = (-0.5 + 0.8 - 1.2 + 1.5 - 2.2) / 5 = -1.6 / 5 = -0.32; clip fraction 2/5;
    # ratio mean (0.5+0.5+1.5+1.5+1.1)/5 = 1.02; approx KL mean of (rho - 1) - log rho.
    ratios = [0.5, 0.5, 1.5, 1.5, 1.1]
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -1.0]])
    logp = (old + torch.tensor([[*(math.log(r) for r in ratios), 5.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss, stats = clipped_surrogate_loss(logp, old, adv, mask, clip_eps=0.2)
    assert float(loss.detach()) == pytest.approx(-0.32, abs=1e-6)
    assert float(stats.clip_fraction) == pytest.approx(0.4)
    assert float(stats.ratio_mean) == pytest.approx(1.02, abs=1e-6)
    k3 = sum((r - 1) - math.log(r) for r in ratios) / 5
    assert float(stats.approx_kl) == pytest.approx(k3, abs=1e-6)
    assert int(stats.num_tokens) == 5
    # Gradient: d(-A*rho)/d logp = -A*rho / 5 on unclipped tokens, 0 on clipped ones and padding.
    loss.backward()
    assert logp.grad is not None
    assert torch.allclose(logp.grad, torch.tensor([[-0.5 / 5, 0.0, 0.0, 1.5 / 5, -2.2 / 5, 0.0]]), atol=1e-6)
    # A normaliser replaces the token count: the same sum over 10.
    loss10, _ = clipped_surrogate_loss(logp, old, adv, mask, clip_eps=0.2, normaliser=10.0)
    assert float(loss10.detach()) == pytest.approx(-0.16, abs=1e-6)


def test_clipped_surrogate_at_ratio_one_is_minus_the_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.3], [-0.7, -4.0, 0.0]])
    adv = torch.tensor([[0.5, -1.5, 3.0], [2.0, 1.0, 8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = clipped_surrogate_loss(logp, logp.clone(), adv, mask, clip_eps=0.2)
    assert float(loss) == pytest.approx(-(0.5 - 1.5 + 3.0 + 2.0 + 1.0) / 5)  # -5/5 = -1
    assert float(stats.clip_fraction) == 0.0
    assert float(stats.approx_kl) == 0.0
    assert float(stats.ratio_mean) == pytest.approx(1.0)


def test_micro_batches_with_a_global_normaliser_add_up_to_the_batch():
    g = torch.Generator().manual_seed(2)
    logp, old, adv = (torch.randn(4, 6, generator=g) for _ in range(3))
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] * 3 + [0] * 3])
    whole, _ = clipped_surrogate_loss(logp, old, adv, mask, clip_eps=0.1)
    n = float(mask.sum())
    parts = [clipped_surrogate_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], 0.1, n)[0]
             for i in (0, 2)]
    assert torch.allclose(parts[0] + parts[1], whole, atol=1e-6)


def test_clipped_surrogate_validates():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_surrogate_loss(x, x, x, torch.ones(1, 2), clip_eps=0.0)
    with pytest.raises(ValueError, match="normaliser"):
        clipped_surrogate_loss(x, x, x, torch.ones(1, 2), clip_eps=0.2, normaliser=0.0)
    with pytest.raises(ValueError, match="same shape"):
        clipped_surrogate_loss(x, x, torch.zeros(1, 3), torch.ones(1, 2), clip_eps=0.2)
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate_loss(x, x, x, torch.ones(2, 2), clip_eps=0.2)


# --- value loss, explained variance, entropy ---------------------------------------------------------------


def test_clipped_value_loss_hand_worked():
    # eps = 0.2, V_old = 1.0 (clip V to [0.8, 1.2]), return G = 2.0:
    #   V 1.5: (1.5-2)^2 = 0.25, clipped (1.2-2)^2 = 0.64 -> 0.64 (clipped branch larger)
    #   V 0.9: (0.9-2)^2 = 1.21, clip(0.9) = 0.9 -> 1.21
    #   V 0.5: (0.5-2)^2 = 2.25, clipped (0.8-2)^2 = 1.44 -> 2.25
    #   padding ignored
    # loss = 0.5 * (0.64 + 1.21 + 2.25) / 3 = 0.5 * 4.1 / 3 = 0.683333; clip fraction 1/3.
    v = torch.tensor([[1.5, 0.9, 0.5, 42.0]], requires_grad=True)
    v_old = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    g = torch.tensor([[2.0, 2.0, 2.0, -42.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_fraction = clipped_value_loss(v, v_old, g, mask, clip_eps_value=0.2)
    assert float(loss.detach()) == pytest.approx(4.1 / 6, abs=1e-6)
    assert float(clip_fraction) == pytest.approx(1 / 3)
    # Gradient 0.5 * 2 (V - G) / 3 on the unclipped terms, 0 where the clipped (constant) branch wins.
    loss.backward()
    assert v.grad is not None
    assert torch.allclose(v.grad, torch.tensor([[0.0, -1.1 / 3, -1.5 / 3, 0.0]]), atol=1e-6)
    # With a normaliser of 4: 0.5 * 4.1 / 4.
    loss4, _ = clipped_value_loss(v, v_old, g, mask, 0.2, normaliser=4.0)
    assert float(loss4.detach()) == pytest.approx(0.5125, abs=1e-6)


def test_a_value_inside_the_band_is_never_counted_as_clipped():
    # In float32 V_old + (V - V_old) is not V here; were that the clipped value, its square could round larger
    # and the token would count as clipped (1 vs 2 processes then disagreed on one token in 96).
    v_old = torch.tensor([[0.09428875148296356]])
    v = torch.tensor([[0.0007572086760774255]])
    assert float(v_old + (v - v_old)) != float(v)
    loss, clip_fraction = clipped_value_loss(v, v_old, torch.zeros(1, 1), torch.ones(1, 1), clip_eps_value=0.2)
    assert float(clip_fraction) == 0.0
    assert float(loss) == 0.5 * float(v * v)


def test_explained_variance():
    g = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert float(explained_variance(g, g, mask)) == pytest.approx(1.0)  # perfect value head
    assert float(explained_variance(torch.full((1, 4), 2.0), g, mask)) == pytest.approx(0.0)  # the mean
    # V = [0, 0, 0]: Var[G - V] = Var[G] -> 0; V = [3, 2, 1]: G - V = [-2, 0, 2], var 8/3 over var 2/3 -> -3.
    assert float(explained_variance(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), g, mask)) == pytest.approx(-3.0)
    assert math.isnan(float(explained_variance(g, torch.ones(1, 4), mask)))


def test_entropy_from_logits():
    # Token 0 uniform over 4 -> log 4; token 1 one certain choice (-inf elsewhere) -> 0; padding ignored.
    inf = math.inf
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [5.0, -inf, -inf, -inf], [1.0, 9.0, 3.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(entropy_from_logits(logits, mask)) == pytest.approx(math.log(4) / 2)


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("inf")]])
    assert float(masked_mean(x, torch.tensor([[1, 1, 0]]))) == pytest.approx(1.5)
    assert float(masked_mean(x, torch.tensor([[1, 1, 0]]), normaliser=6.0)) == pytest.approx(0.5)
    assert float(masked_mean(x, torch.zeros(1, 3))) == 0.0
