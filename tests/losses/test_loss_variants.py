"""Loss variants chosen by a parameter (dpo's reference_free, simpo's loss_type and label_smoothing).

The registry-wide suite checks each loss at its defaults; these variants get the same contract here,
plus the properties their formulas promise.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from loss_cases import (
    check_output_contract,
    grad_of,
    logps_stats,
    single_thread,
    swap_chosen_rejected,
    with_grad,
)

from alignkit.losses import LossConfig, ObjectiveError, PreferenceStats, build_objective, get_loss

FAST = settings(max_examples=30, deadline=None)

# (loss, parameters, whether gradient descent always raises the chosen response relative to the rejected)
VARIANTS = [
    ("dpo", {"reference_free": True}, True),
    ("dpo", {"reference_free": True, "label_smoothing": 0.2}, False),  # cDPO pulls back past its minimum
    ("dpo", {"reference_free": True, "label_smoothing": 0.2, "robust": True}, True),
    ("simpo", {"loss_type": "hinge"}, True),
    ("simpo", {"loss_type": "sigmoid", "label_smoothing": 0.2}, False),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}" for name, params, _ in VARIANTS]
variants = pytest.mark.parametrize("name, params, monotone", VARIANTS, ids=IDS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def config(name: str, params: dict) -> LossConfig:
    return get_loss(name).config(**params)


@variants
@FAST
@given(stats=logps_stats())
def test_output_contract(name: str, params: dict, monotone: bool, stats: PreferenceStats) -> None:
    check_output_contract(get_loss(name), stats, config(name, params))


@variants
@FAST
@given(stats=logps_stats(), other=logps_stats())
def test_reference_free_variants_ignore_the_reference(
    name: str, params: dict, monotone: bool, stats: PreferenceStats, other: PreferenceStats
) -> None:
    """Other reference log-probs, or none, give exactly the same output."""
    spec, cfg = get_loss(name), config(name, params)
    assert not spec.reads_reference(cfg)
    b = stats.batch_size
    moved = PreferenceStats(**{**vars(stats), "reference_chosen_logps": other.policy_chosen_logps[:1].expand(b),
                               "reference_rejected_logps": other.policy_rejected_logps[:1].expand(b)})
    without = PreferenceStats(**{**vars(stats), "reference_chosen_logps": None, "reference_rejected_logps": None})
    base = spec(stats, cfg)
    for variant in (moved, without):
        out = spec(variant, cfg)
        assert torch.equal(out.losses, base.losses)
        assert torch.equal(out.chosen_rewards, base.chosen_rewards)


@variants
@FAST
@given(stats=logps_stats())
def test_swapping_flips_the_reward_margin(name: str, params: dict, monotone: bool, stats: PreferenceStats) -> None:
    spec, cfg = get_loss(name), config(name, params)
    out, swapped = spec(stats, cfg), spec(swap_chosen_rejected(stats), cfg)
    torch.testing.assert_close(swapped.chosen_rewards, out.rejected_rewards)
    torch.testing.assert_close(swapped.rejected_rewards, out.chosen_rewards)


@pytest.mark.parametrize("name, params, monotone", [v for v in VARIANTS if v[2]],
                         ids=[i for i, v in zip(IDS, VARIANTS, strict=True) if v[2]])
@FAST
@given(stats=logps_stats())
def test_gradient_prefers_the_chosen_response(name: str, params: dict, monotone: bool, stats: PreferenceStats) -> None:
    stats = with_grad(stats)
    get_loss(name)(stats, config(name, params)).losses.sum().backward()
    assert (grad_of(stats, "policy_chosen_logps") <= 1e-6).all()
    assert (grad_of(stats, "policy_rejected_logps") >= -1e-6).all()


def _simpo_stats(z: torch.Tensor) -> PreferenceStats:
    """One-token responses whose SimPO margin is exactly z at β = 1, γ = 0: a_w = z − 5, a_l = −5."""
    ones = torch.ones_like(z)
    return PreferenceStats(policy_chosen_logps=z - 5, policy_rejected_logps=ones * -5,
                           chosen_lengths=ones, rejected_lengths=ones)


def test_simpo_hinge_is_one_minus_z_below_one_and_zero_above() -> None:
    z = torch.linspace(-20, 20, 401)
    losses = get_loss("simpo")(_simpo_stats(z), config("simpo", {"beta": 1.0, "gamma": 0.0, "loss_type": "hinge"}))
    torch.testing.assert_close(losses.losses, (1 - z).clamp(min=0))


def test_smoothed_simpo_has_its_minimum_at_the_soft_label() -> None:
    """−(1−ε)·log σ(z) − ε·log σ(−z) is a cross-entropy against 1 − ε: minimum at z = log((1 − ε)/ε)."""
    eps = 0.2
    z_star = math.log((1 - eps) / eps)
    z = torch.tensor([z_star - 0.5, z_star, z_star + 0.5])
    losses = get_loss("simpo")(_simpo_stats(z), config("simpo", {"beta": 1.0, "gamma": 0.0,
                                                                 "label_smoothing": eps})).losses
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_dpo_reference_need_follows_the_config() -> None:
    """The registry answers per config; an objective asks each of its terms."""
    spec = get_loss("dpo")
    assert spec.needs_reference and spec.reads_reference() and spec.reference_rule is not None
    assert not spec.reads_reference(config("dpo", {"reference_free": True}))
    assert not get_loss("simpo").reads_reference(config("simpo", {"loss_type": "hinge"}))
    assert not build_objective({"name": "dpo", "reference_free": True}).needs_reference
    assert not build_objective([{"name": "dpo", "reference_free": True}, {"name": "sft", "weight": 0.1}]).needs_reference
    assert build_objective([{"name": "dpo", "reference_free": True}, {"name": "ipo"}]).needs_reference


@pytest.mark.parametrize("section, where, message", [
    ({"name": "simpo", "loss_type": "hinge", "label_smoothing": 0.1}, ("loss",),
     "label_smoothing (0.1) applies to loss_type 'sigmoid' only"),
    ({"name": "simpo", "loss_type": "logistic"}, ("loss", "loss_type"), "Input should be 'sigmoid' or 'hinge'"),
    ({"name": "simpo", "label_smoothing": 0.5}, ("loss", "label_smoothing"), "less than 0.5"),
    ({"name": "dpo", "reference_free": "maybe"}, ("loss", "reference_free"), "valid boolean"),
])
def test_bad_variant_settings_name_the_field(section: dict, where: tuple, message: str) -> None:
    with pytest.raises(ObjectiveError) as err:
        build_objective(section)
    ((loc, text),) = err.value.problems
    assert loc == where and message in text
