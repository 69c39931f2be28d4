"""Independent check: TRL 1.16's GRPO loss types against the same parts computed here, loss and gradient.

How TRL is called: ``GRPOTrainer._compute_loss(model, inputs)`` itself, on a trainer object made without its
constructor (no model download, no dataset) and given the attributes that method reads (its loss type, clip
range, beta, a real single-process ``accelerate.Accelerator``); its per-token log-prob forward is replaced by
the log-probs we give both sides (a leaf tensor with a gradient), so both compute from the same per-token
inputs: log pi, log pi_old, log pi_ref, the (B,) advantages and the mask.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

from alignkit.online.parts import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, BatchSizes, PolicyLossInputs  # noqa: E402

MAX_LEN = 5


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 4, 1])
    mask = torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)
    logps = -torch.rand((4, MAX_LEN), generator=g) * 2 - 0.1
    old = logps + 0.3 * torch.randn((4, MAX_LEN), generator=g)
    ref = logps + 0.5 * torch.randn((4, MAX_LEN), generator=g)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    return logps, old, ref, adv, mask


def _trl_loss(loss_type: str, logps, old, ref, adv, mask, *, beta: float, eps_low: float, eps_high: float,
              level: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    from accelerate import Accelerator

    trainer = trl_grpo.GRPOTrainer.__new__(trl_grpo.GRPOTrainer)
    leaf = logps.clone().requires_grad_(True)
    attributes = {
        "loss_type": loss_type, "epsilon_low": eps_low, "epsilon_high": eps_high, "beta": beta,
        "importance_sampling_level": level, "top_entropy_quantile": 1.0, "off_policy_mask_threshold": None,
        "use_vllm": False, "vllm_importance_sampling_correction": False, "aux_loss_enabled": False,
        "_entropy_bonus_enabled": False, "current_gradient_accumulation_steps": 1,
        "max_completion_length": MAX_LEN, "accelerator": Accelerator(cpu=True),
        "model": torch.nn.Linear(1, 1), "_metrics": defaultdict(lambda: defaultdict(list)),
        "args": SimpleNamespace(delta=None, use_bias_correction_kl=False, sapo_temperature_pos=1.0,
                                sapo_temperature_neg=1.05, steps_per_generation=1),
    }
    for name, value in attributes.items():
        object.__setattr__(trainer, name, value)
    object.__setattr__(trainer, "_get_per_token_logps_and_entropies",
                       lambda *a, **k: (leaf, torch.zeros_like(leaf), None))
    ids = torch.zeros((4, MAX_LEN), dtype=torch.long)
    inputs = {"prompt_ids": ids[:, :1], "prompt_mask": torch.ones((4, 1), dtype=torch.long),
              "completion_ids": ids, "completion_mask": mask.long(), "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().float()}
    loss = trl_grpo.GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    loss.backward()
    assert leaf.grad is not None
    return loss.detach(), leaf.grad


def _ours(policy_loss: str, aggregation: str, logps, old, ref, adv, mask, *, beta: float,
          **settings) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = logps.clone().requires_grad_(True)
    spec = POLICY_LOSSES.get(policy_loss)
    advantages = torch.where(mask, adv.unsqueeze(1).expand_as(mask), 0.0)
    per_token = spec.fn(PolicyLossInputs(leaf, old, advantages, mask), spec.config(**settings)).per_token
    if beta:
        zeros = torch.zeros_like(leaf)
        per_token = per_token + beta * KL_ESTIMATORS.get("k3").fn(torch.where(mask, leaf, zeros),
                                                                   torch.where(mask, ref, zeros))
    agg = AGGREGATIONS.get(aggregation)
    loss = agg.fn(per_token, mask, BatchSizes(float(mask.sum()), 4.0, float(MAX_LEN)), agg.config())
    loss.backward()
    assert leaf.grad is not None
    return loss.detach(), leaf.grad


CASES = [  # (TRL loss type, TRL settings, our policy loss, our aggregation, our settings)
    ("grpo", {"eps_low": 0.2, "eps_high": 0.2}, "ppo_clip", "seq_mean_token_mean", {"clip_low": 0.2}),
    ("bnpo", {"eps_low": 0.2, "eps_high": 0.2}, "ppo_clip", "token_mean", {"clip_low": 0.2}),
    ("dr_grpo", {"eps_low": 0.2, "eps_high": 0.2}, "ppo_clip", "seq_mean_token_sum_norm", {"clip_low": 0.2}),
    ("dapo", {"eps_low": 0.2, "eps_high": 0.28}, "dapo", "token_mean", {}),
    ("cispo", {"eps_low": 0.2, "eps_high": 1.3}, "cispo", "token_mean", {"clip_high": 0.3}),
    ("sapo", {"eps_low": 0.2, "eps_high": 0.2}, "sapo", "seq_mean_token_mean", {}),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize(("loss_type", "trl_settings", "ours", "aggregation", "settings"), CASES)
def test_trl_loss_types_agree_with_the_parts(loss_type, trl_settings, ours, aggregation, settings, beta):
    for seed in range(3):
        batch = _batch(seed)
        want_loss, want_grad = _trl_loss(loss_type, *batch, beta=beta, **trl_settings)
        loss, grad = _ours(ours, aggregation, *batch, beta=beta, **settings)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_trl_sequence_level_importance_sampling_is_gspo():
    for seed in range(3):
        batch = _batch(seed)
        want_loss, want_grad = _trl_loss("grpo", *batch, beta=0.0, eps_low=3e-4, eps_high=4e-4, level="sequence")
        loss, grad = _ours("gspo", "seq_mean_token_mean", *batch, beta=0.0)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
