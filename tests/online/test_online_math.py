"""RLOO advantages, the KL estimate, the EMA anchor, the beta controller, SLERP and LITI, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.online.anchor import EMAAnchor, FrozenAnchor, swapped_parameters
from alignkit.online.kl_control import AdaptiveKLController, FixedKLController
from alignkit.online.rloo import (
    distinct_n,
    leave_one_out_advantages,
    penalised_rewards,
    policy_gradient_loss,
    sequence_kl_estimate,
)
from alignkit.online.warp import interpolate, liti, slerp, slerp_merge


def test_leave_one_out_advantage_hand_worked():
    # k = 3, rewards [1, 2, 6]: each minus the mean of the other two.
    adv = leave_one_out_advantages(torch.tensor([[1.0, 2.0, 6.0]]))
    assert torch.allclose(adv, torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5]]))


def test_advantages_per_prompt_and_k1_batch_mean():
    adv = leave_one_out_advantages(torch.tensor([[0.0, 2.0], [10.0, 10.0]]))
    assert torch.allclose(adv, torch.tensor([[-2.0, 2.0], [0.0, 0.0]]))
    adv1 = leave_one_out_advantages(torch.tensor([[1.0], [3.0]]))  # k = 1: batch mean 2
    assert torch.allclose(adv1, torch.tensor([[-1.0], [1.0]]))
    # One process's share of a larger batch: the baseline is the whole batch's mean, given.
    share = leave_one_out_advantages(torch.tensor([[1.0], [3.0]]), batch_mean=4.0)
    assert torch.allclose(share, torch.tensor([[-3.0], [-1.0]]))
    assert torch.equal(leave_one_out_advantages(torch.tensor([[0.0, 2.0]]), batch_mean=9.0),
                       torch.tensor([[-2.0, 2.0]]))  # k > 1: the other samples of the prompt, as before


def test_penalised_reward_and_policy_gradient_loss():
    r = penalised_rewards(torch.tensor([1.0, 0.0]), torch.tensor([2.0, -1.0]), beta=0.5)
    assert torch.allclose(r, torch.tensor([0.0, 0.5]))
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss = policy_gradient_loss(logps, torch.tensor([3.0, -1.0]))
    assert float(loss.detach()) == pytest.approx(-(3 * -1.0 + -1 * -2.0) / 2)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([-1.5, 0.5]))  # -A_i / N


def test_kl_estimate_one_token_hand_case():
    # One sampled token with p = 0.5 under the policy and 0.25 under the anchor: log(0.5 / 0.25) = log 2.
    kl = sequence_kl_estimate(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert float(kl) == pytest.approx(math.log(2.0))


def test_kl_estimate_matches_model_log_ratio_on_one_token(tiny_gpt2, gpt2_tokenizer):
    from alignkit.models.generate import Completion
    from alignkit.models.kl import completion_logps

    comp = [Completion(0, "x", [464, 3290], [318])]
    other = type(tiny_gpt2)(tiny_gpt2.config)
    with torch.no_grad():
        logits_p = tiny_gpt2(torch.tensor([[464, 3290]])).logits[0, -1].log_softmax(-1)[318]
        logits_q = other.eval()(torch.tensor([[464, 3290]])).logits[0, -1].log_softmax(-1)[318]
    kl = sequence_kl_estimate(completion_logps(tiny_gpt2, comp, batch_size=1, pad_token_id=0),
                              completion_logps(other, comp, batch_size=1, pad_token_id=0))
    assert float(kl) == pytest.approx(float(logits_p - logits_q), abs=1e-5)


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2]], 1) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[1]], 2) == 0.0


def test_ema_anchor_update_and_swap():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 4.0]]))
    ema = EMAAnchor(lin, rate=0.25)
    frozen = FrozenAnchor(lin)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[8.0, 0.0]]))
    ema.update()
    frozen.update()
    # (1 - 0.25) * [0, 4] + 0.25 * [8, 0] = [2, 3]
    assert torch.allclose(ema.tensors["weight"], torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(frozen.tensors["weight"], torch.tensor([[0.0, 4.0]]))
    with ema.model_context() as m:
        assert torch.allclose(m.weight, torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(lin.weight, torch.tensor([[8.0, 0.0]]))  # restored
    with pytest.raises(KeyError), swapped_parameters(lin, {"nope": torch.zeros(1)}):
        pass


def test_adaptive_beta_follows_ziegler_rule():
    c = AdaptiveKLController(beta=0.1, target=2.0, k_beta=0.1)
    assert c.update(2.2) == pytest.approx(0.1 * (1 + 0.1 * 0.1))  # error 0.1, inside the clip
    b = c.beta
    assert c.update(100.0) == pytest.approx(b * 1.02)  # clipped at +0.2
    b = c.beta
    assert c.update(0.0) == pytest.approx(b * 0.98)  # clipped at -0.2
    assert FixedKLController(0.3).update(50.0) == 0.3
    with pytest.raises(ValueError):
        AdaptiveKLController(beta=0.0, target=1.0)


def test_slerp_orthogonal_unit_vectors_half():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # Omega = pi/2: sin(pi/4) / sin(pi/2) * (a + b) = (a + b) / sqrt(2): stays on the unit circle.
    assert torch.allclose(slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)


def test_slerp_parallel_and_zero_fall_back_to_linear():
    a = torch.tensor([1.0, 2.0])
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)  # angle 0: linear
    assert torch.allclose(slerp(torch.zeros(2), a, 0.5), 0.5 * a)  # zero task vector: linear


def test_slerp_merge_uses_task_vectors_and_iterates_for_three_runs():
    init = {"w": torch.tensor([1.0, 1.0, 1.0])}
    thetas = [{"w": init["w"] + e} for e in torch.eye(3)]
    merged = slerp_merge(init, thetas[:2])
    assert torch.allclose(merged["w"], init["w"] + torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    # M = 3: slerp(slerp(e1, e2, 1/2), e3, 1/3); the angle between u = (e1+e2)/sqrt2 and e3 is pi/2.
    u = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2)
    expected = math.sin(2 / 3 * math.pi / 2) * u + math.sin(1 / 3 * math.pi / 2) * torch.tensor([0.0, 0.0, 1.0])
    merged3 = slerp_merge(init, thetas)
    assert torch.allclose(merged3["w"], init["w"] + expected)
    # The merged task vector keeps unit norm: orthogonal unit directions stay on the sphere.
    assert float((merged3["w"] - init["w"]).norm()) == pytest.approx(1.0)


def test_liti_and_front():
    init, merged = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 0.0])}
    assert torch.allclose(liti(init, merged, 0.25)["w"], torch.tensor([1.0, 1.5]))
    assert torch.allclose(interpolate(init, merged, 1.0)["w"], merged["w"])
    with pytest.raises(ValueError):
        liti(init, merged, 1.5)
