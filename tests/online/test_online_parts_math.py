"""Every registered online part on a few tokens and two groups, against numbers worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.online.parts import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageInputs,
    BatchSizes,
    PolicyLossInputs,
)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --- advantages: two groups of two, scores [1, 3] and [0, 2], one token each --------------------------------
SCORES = torch.tensor([1.0, 3.0, 0.0, 2.0])


def _advantages(name: str, scores=SCORES, k: int = 2, **settings) -> list[float]:
    spec = ADVANTAGES.get(name)
    mask = torch.ones((scores.numel(), 1), dtype=torch.bool)
    inputs = AdvantageInputs(rewards=scores, scores=scores, token_kl=torch.zeros(mask.shape), kl_coef=0.0,
                             mask=mask, group_size=k)
    return spec.fn(inputs, spec.config(**settings)).advantages[:, 0].tolist()


def test_group_advantages_by_hand():
    # grpo: group means 2 and 1, sample std sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt 2 in both: +-1 / (sqrt 2 + 1e-4)
    a = 1 / (math.sqrt(2) + 1e-4)
    assert _advantages("grpo") == pytest.approx([-a, a, -a, a], rel=1e-6)
    assert _advantages("dr_grpo") == [-1.0, 1.0, -1.0, 1.0]  # centred only
    assert _advantages("rloo") == [-2.0, 2.0, -2.0, 2.0]  # 1 - 3, 3 - 1, 0 - 2, 2 - 0
    assert _advantages("reinforce") == [-0.5, 1.5, -1.5, 0.5]  # minus the batch mean 1.5
    assert _advantages("rloo", k=1) == [-0.5, 1.5, -1.5, 0.5]  # k = 1: the batch mean too


def test_reinforce_pp_whitens_over_the_batch_by_hand():
    # returns = rewards (no KL): mean 1.5, unbiased var (0.25 + 2.25 + 2.25 + 0.25) / 3 = 5/3
    s = math.sqrt(5 / 3 + 1e-8)
    assert _advantages("reinforce_pp") == pytest.approx([-0.5 / s, 1.5 / s, -1.5 / s, 0.5 / s], rel=1e-6)
    # group baseline first: [-1, 1, -1, 1], mean 0, unbiased var 4/3
    s = math.sqrt(4 / 3 + 1e-8)
    assert _advantages("reinforce_pp", group_baseline=True) == pytest.approx([-1 / s, 1 / s, -1 / s, 1 / s], rel=1e-6)


def test_reinforce_pp_puts_the_kl_on_every_token_to_go():
    # one sequence of 2 tokens and one of 1: R = [1, 0], kl = [[0.2, 0.4], [0.6, -]], beta 0.5
    # G = [[1 - 0.5 (0.2 + 0.4), 1 - 0.5 * 0.4], [0 - 0.5 * 0.6]] = [[0.7, 0.8], [-0.3]]; whitened over 3 tokens
    spec = ADVANTAGES.get("reinforce_pp")
    mask = torch.tensor([[True, True], [True, False]])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0]), scores=torch.tensor([1.0, 0.0]),
                             token_kl=torch.tensor([[0.2, 0.4], [0.6, 9.0]]), kl_coef=0.5, mask=mask, group_size=1)
    g = torch.tensor([0.7, 0.8, -0.3])
    want = (g - g.mean()) / (g.var() + 1e-8).sqrt()
    out = spec.fn(inputs, spec.config()).advantages
    torch.testing.assert_close(out[mask], want)
    assert out[1, 1] == 0.0


def test_gae_by_hand():
    # 2 tokens, kl [0.2, 0.4], beta 0.5, R = 1, V = [0.5, 0.25], gamma 1, lam 0.95, no whitening:
    # r = [-0.1, -0.2 + 1] ; delta_1 = 0.8 - 0.25 = 0.55 ; delta_0 = -0.1 + 0.25 - 0.5 = -0.35
    # A_1 = 0.55 ; A_0 = -0.35 + 0.95 * 0.55 = 0.1725 ; G = A + V = [0.6725, 0.8]
    spec = ADVANTAGES.get("gae")
    mask = torch.ones((1, 2), dtype=torch.bool)
    inputs = AdvantageInputs(rewards=torch.tensor([1.0]), scores=torch.tensor([1.0]),
                             token_kl=torch.tensor([[0.2, 0.4]]), kl_coef=0.5, mask=mask, group_size=1,
                             values=torch.tensor([[0.5, 0.25]]))
    out = spec.fn(inputs, spec.config(whiten=False))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.1725, 0.55]]))
    assert out.returns is not None
    torch.testing.assert_close(out.returns, torch.tensor([[0.6725, 0.8]]))


# --- policy losses: one row, ratios [1.5, 0.5, 1], A = [1, -1, 2], log pi = log [0.3, 0.2, 0.5] ------------------
LOGP = torch.log(torch.tensor([[0.3, 0.2, 0.5]]))
OLD = LOGP - torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
ADV = torch.tensor([[1.0, -1.0, 2.0]])
MASK = torch.ones((1, 3), dtype=torch.bool)


def _loss(name: str, logp=LOGP, old=OLD, adv=ADV, mask=MASK, **settings) -> tuple[list[float], list[float]]:
    spec = POLICY_LOSSES.get(name)
    x = logp.clone().requires_grad_(True)
    out = spec.fn(PolicyLossInputs(x, old, adv, mask), spec.config(**settings))
    out.per_token.sum().backward()
    assert x.grad is not None
    return out.per_token[0].tolist(), x.grad[0].tolist()


def test_ppo_clip_by_hand():
    # rho 1.5, A 1: max(-1.5, -1.2) = -1.2 clipped (grad 0); rho 0.5, A -1: max(0.5, 0.8) = 0.8 clipped (grad 0);
    # rho 1, A 2: -2 (grad -A rho = -2)
    loss, grad = _loss("ppo_clip")
    assert loss == pytest.approx([-1.2, 0.8, -2.0]) and grad == pytest.approx([0.0, 0.0, -2.0])
    # clip_high 0.6: rho 1.5 is inside [0.8, 1.6]: -1.5, grad -1.5
    loss, grad = _loss("ppo_clip", clip_high=0.6)
    assert loss == pytest.approx([-1.5, 0.8, -2.0]) and grad == pytest.approx([-1.5, 0.0, -2.0])


def test_the_dual_clip_by_hand():
    # rho 4, A -1: max(4, 1.2) = 4, capped at c = 3 (grad 0); without the dual clip: 4 with grad -A rho = 4
    logp, old, adv = torch.log(torch.tensor([[0.4]])), torch.log(torch.tensor([[0.1]])), torch.tensor([[-1.0]])
    mask = torch.ones((1, 1), dtype=torch.bool)
    assert _loss("ppo_clip", logp, old, adv, mask, dual_clip=3.0) == (pytest.approx([3.0]), pytest.approx([0.0]))
    assert _loss("ppo_clip", logp, old, adv, mask) == (pytest.approx([4.0]), pytest.approx([4.0]))


def test_dapo_by_hand():
    # clip-higher 0.28: rho 1.5 clipped at 1.28 -> -1.28; the others as PPO's
    loss, grad = _loss("dapo")
    assert loss == pytest.approx([-1.28, 0.8, -2.0]) and grad == pytest.approx([0.0, 0.0, -2.0])


def test_gspo_by_hand():
    # s = exp((log 1.5 + log 0.5 + 0) / 3) = 0.75^(1/3); band [1 - 3e-4, 1 + 4e-4]
    # A > 0: max(-A s, -A 0.9997) = -A s (unclipped, grad -A s); A < 0: max(s, 0.9997) = 0.9997 (clipped, grad 0)
    s = 0.75 ** (1 / 3)
    loss, grad = _loss("gspo")
    assert loss == pytest.approx([-s, 0.9997, -2 * s], rel=1e-6) and grad == pytest.approx([-s, 0.0, -2 * s], rel=1e-6)


def test_cispo_by_hand():
    # l = -sg[w] A log pi: w = rho = [1.5, 0.5, 1] (inside the cap 5); grad -w A = [-1.5, 0.5, -2]
    loss, grad = _loss("cispo")
    want = [-1.5 * math.log(0.3), 0.5 * math.log(0.2), -2 * math.log(0.5)]  # -w A log pi
    assert loss == pytest.approx(want, rel=1e-6) and grad == pytest.approx([-1.5, 0.5, -2.0])
    _, grad = _loss("cispo", clip_high=0.2, clip_low=0.6)  # w = [1.2, 0.5 -> 0.4 raised, 1]
    assert grad == pytest.approx([-1.2, 0.5, -2.0])


def test_sapo_by_hand():
    # l = -A 4/tau sigmoid(tau (rho - 1)); tau 1 for A > 0, 1.05 for A < 0
    loss, grad = _loss("sapo")
    want = [-4 * _sigmoid(0.5), 4 / 1.05 * _sigmoid(1.05 * -0.5), -8 * _sigmoid(0.0)]
    # grad = -A 4 sigmoid (1 - sigmoid) rho
    want_grad = [-4 * _sigmoid(0.5) * (1 - _sigmoid(0.5)) * 1.5,
                 4 * _sigmoid(-0.525) * (1 - _sigmoid(-0.525)) * 0.5, -2.0]
    assert loss == pytest.approx(want, rel=1e-6) and grad == pytest.approx(want_grad, rel=1e-5)


def test_vanilla_pg_by_hand():
    loss, grad = _loss("vanilla_pg")
    assert loss == pytest.approx([-math.log(0.3), math.log(0.2), -2 * math.log(0.5)], rel=1e-6)  # -A log pi
    assert grad == [-1.0, 1.0, -2.0]


# --- aggregations: per-token losses [[1, 2, 3], [4, -, -]], L = 4 ------------------------------------------------
def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    sizes = BatchSizes(tokens=4.0, sequences=2.0, max_tokens=4.0)

    def agg(name: str) -> float:
        return float(AGGREGATIONS.get(name).fn(values, mask, sizes, AGGREGATIONS.get(name).config()))

    assert agg("token_mean") == 2.5  # (1 + 2 + 3 + 4) / 4
    assert agg("seq_mean_token_sum") == 5.0  # (6 + 4) / 2
    assert agg("seq_mean_token_mean") == 3.0  # (6/3 + 4/1) / 2
    assert agg("seq_mean_token_sum_norm") == 1.25  # (6/4 + 4/4) / 2


# --- KL: log pi = log 0.5, log pi_ref = log 0.25 ---------------------------------------------------------------
def test_kl_estimators_by_hand():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    ln2 = math.log(2)
    assert float(KL_ESTIMATORS.get("k1").fn(logp, ref)[0]) == pytest.approx(ln2)
    assert float(KL_ESTIMATORS.get("k2").fn(logp, ref)[0]) == pytest.approx(0.5 * ln2**2)
    assert float(KL_ESTIMATORS.get("k3").fn(logp, ref)[0]) == pytest.approx(0.5 + ln2 - 1)  # e^-ln2 + ln2 - 1


# --- rollout corrections: w = [3, 1.5, 0.5] (trainer / sampler), cap 2 ------------------------------------------
def test_corrections_by_hand():
    sampler = torch.log(torch.tensor([[0.1, 0.2, 0.4]]))
    trainer = sampler + torch.log(torch.tensor([[3.0, 1.5, 0.5]]))
    mask = torch.ones((1, 3), dtype=torch.bool)

    def weights(name: str, **settings) -> list[float]:
        spec = CORRECTIONS.get(name)
        return spec.fn(trainer, sampler, mask, spec.config(**settings))[0].tolist()

    assert weights("none") == [1.0, 1.0, 1.0]
    assert weights("tis") == pytest.approx([2.0, 1.5, 0.5])  # min(w, 2)
    assert weights("mis") == pytest.approx([0.0, 1.5, 0.5])  # w past the cap: dropped
    assert weights("seq_mask") == [0.0, 0.0, 0.0]  # W = 3 * 1.5 * 0.5 = 2.25 > 2: the sequence is dropped
    assert weights("seq_mask", cap=3.0) == pytest.approx([2.25, 2.25, 2.25])


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_are_the_models_kl_estimate(name: str) -> None:
    """The registered online estimators are the one implementation in models: bit-equal values, and the same
    refusal of log-probs whose shapes differ (broadcasting would silently pair the wrong tokens)."""
    from alignkit.models.kl_estimators import kl_estimate

    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(4, 7, generator=g) * 3, -torch.rand(4, 7, generator=g) * 3
    assert torch.equal(KL_ESTIMATORS.get(name).fn(logp, ref), kl_estimate(logp, ref, name))
    with pytest.raises(ValueError, match="same shape"):
        KL_ESTIMATORS.get(name).fn(logp, ref[0])


def test_gmpo_by_hand():
    # log-ratios d = [log 1.5, log 0.5, 0] = [0.405, -0.693, 0]; eps 0.4 both ways.
    # A > 0 rows cap d at 0.4: R+ = (e^0.4 * 0.5 * 1)^(1/3); A < 0 floors d at -0.4: R- = (1.5 * e^-0.4 * 1)^(1/3).
    # Token 0 (A 1, d 0.405 > 0.4) and token 1 (A -1, d -0.693 < -0.4) are clipped (grad 0); token 2 is free.
    r_pos, r_neg = (math.exp(0.4) * 0.5) ** (1 / 3), (1.5 * math.exp(-0.4)) ** (1 / 3)
    loss, grad = _loss("gmpo")
    assert loss == pytest.approx([-r_pos, r_neg, -2 * r_pos], rel=1e-6)
    assert grad == pytest.approx([0.0, 0.0, -2 * r_pos], rel=1e-6)
    # A wide clip (eps 1) clips nothing: R = 0.75^(1/3) for every token, and each token's gradient is -A R.
    r = 0.75 ** (1 / 3)
    loss, grad = _loss("gmpo", clip_low=1.0, clip_high=1.0)
    assert loss == pytest.approx([-r, r, -2 * r], rel=1e-6) and grad == pytest.approx([-r, r, -2 * r], rel=1e-6)


def test_gmpo_with_its_aggregation_is_the_papers_sequence_objective():
    """Token form + seq_mean_token_mean == -mean_i A_i (prod_t clipped rho_i,t)^(1/|y_i|), value and gradient,
    with one advantage per sequence (the formula written directly, sequence by sequence)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    logp = -torch.rand(mask.shape, generator=g) * 2
    old = logp + 0.6 * torch.randn(mask.shape, generator=g)
    adv_seq = torch.tensor([1.3, -0.7, 0.4])
    adv = adv_seq[:, None].expand(mask.shape).clone()
    spec, cfg = POLICY_LOSSES.get("gmpo"), POLICY_LOSSES.get("gmpo").config()
    agg = AGGREGATIONS.get("seq_mean_token_mean")
    sizes = BatchSizes(tokens=float(mask.sum()), sequences=3.0, max_tokens=4.0)

    x = logp.clone().requires_grad_(True)
    out = spec.fn(PolicyLossInputs(x, old, adv, mask), cfg)
    ours = agg.fn(out.per_token, mask, sizes, agg.config())
    ours.backward()

    y = logp.clone().requires_grad_(True)
    terms = []
    for i in range(3):
        d = y[i][mask[i]] - old[i][mask[i]]
        clipped = d.clamp(max=cfg.clip_high) if adv_seq[i] > 0 else d.clamp(min=-cfg.clip_low)
        terms.append(-adv_seq[i] * torch.exp(clipped.mean()))
    direct = torch.stack(terms).mean()
    direct.backward()
    assert float(ours.detach()) == pytest.approx(float(direct.detach()), rel=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)
