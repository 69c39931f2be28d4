"""Properties every registered loss keeps, checked with hypothesis over ``list_losses()``.

A new loss, built-in or loaded as a plugin (see loss_cases.py), is checked here automatically. Losses
that by design do not keep a property are listed with the reason.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_cases import (
    PROPERTY_IDS,
    PROPERTY_LOSSES,
    check_output_contract,
    grad_of,
    logps_stats,
    single_thread,
    stats_for,
    swap_chosen_rejected,
    with_grad,
)

from alignkit.losses import LOGPS, SCORES, UNPAIRED, LossSpec, PreferenceStats

FAST = settings(max_examples=30, deadline=None)
params = pytest.mark.parametrize("spec", PROPERTY_LOSSES, ids=PROPERTY_IDS)

# Losses whose gradient (at default parameters) does not always raise the chosen response relative to
# the rejected one. (dpo with label_smoothing > 0, cDPO, also pulls back past log((1−ε)/ε).)
NOT_PREFERENCE_MONOTONE = {
    "ipo": "regresses the margin onto 1/(2β): past the target it pulls the margin back down",
    "sppo_hard": "regresses each log-ratio onto ±1/(2β): past a target it pulls that log-ratio back",
    "exo_pair": "reverse KL to smoothed labels: minimum at β·h = log((1−ε)/ε), pulls back beyond",
    "discopop": "non-convex blend: the sigmoid gate makes it increase with the margin near h = 0",
    "nca_pair": "bounds the chosen reward: lowers the chosen log-prob once β·log-ratio(yw) > ln 2",
    "apo_down": "anchors both likelihoods downward: the σ(r_w) term lowers the chosen log-prob",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@params
def test_every_parameter_is_documented(spec: LossSpec) -> None:
    """Defaults exist (the config builds empty) and every field has a description."""
    spec.config()
    for name, info in spec.config.model_fields.items():
        assert info.description, f"{spec.name}.{name} has no description"
    assert spec.description, f"{spec.name} has no description"


@params
@FAST
@given(data=st.data())
def test_output_contract(spec: LossSpec, data: st.DataObject) -> None:
    """(B,) fp32 finite losses and finite gradients down to log-probs of −1e4 and lengths of 1;
    detached rewards; no batch reduction."""
    check_output_contract(spec, data.draw(stats_for(spec)))


@params
@FAST
@given(data=st.data(), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_half_precision_inputs_give_fp32(spec: LossSpec, data: st.DataObject, dtype: torch.dtype) -> None:
    """LossSpec.__call__ casts bf16/fp16 statistics to fp32 before the loss sees them."""
    stats = data.draw(stats_for(spec))
    half = PreferenceStats(**{
        k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in vars(stats).items()
    })
    out = spec(half)
    assert out.losses.dtype == torch.float32
    assert out.chosen_rewards.dtype == torch.float32
    assert torch.isfinite(out.losses).all()


@pytest.mark.parametrize(
    "spec", [s for s in PROPERTY_LOSSES if not s.needs_reference and s.inputs is LOGPS],
    ids=lambda s: s.name,
)
@FAST
@given(stats=logps_stats(), other=logps_stats())
def test_reference_free_ignores_reference(spec: LossSpec, stats: PreferenceStats, other: PreferenceStats) -> None:
    """needs_reference=False: other reference log-probs, or none, give exactly the same output."""
    b = stats.batch_size
    moved = PreferenceStats(**{**vars(stats), "reference_chosen_logps": other.policy_chosen_logps[:1].expand(b),
                               "reference_rejected_logps": other.policy_rejected_logps[:1].expand(b)})
    without = PreferenceStats(**{**vars(stats), "reference_chosen_logps": None, "reference_rejected_logps": None})
    base = spec(stats)
    for variant in (moved, without):
        out = spec(variant)
        assert torch.equal(out.losses, base.losses)
        assert torch.equal(out.chosen_rewards, base.chosen_rewards)


@pytest.mark.parametrize(
    "spec", [s for s in PROPERTY_LOSSES if s.inputs in (LOGPS, SCORES)], ids=lambda s: s.name
)
@FAST
@given(data=st.data())
def test_swapping_chosen_and_rejected_flips_the_reward_margin(spec: LossSpec, data: st.DataObject) -> None:
    """Exchanging the responses exchanges their rewards, so the margin changes sign."""
    stats = data.draw(stats_for(spec))
    out, swapped = spec(stats), spec(swap_chosen_rejected(stats))
    torch.testing.assert_close(swapped.chosen_rewards, out.rejected_rewards)
    torch.testing.assert_close(swapped.rejected_rewards, out.chosen_rewards)
    torch.testing.assert_close(
        swapped.chosen_rewards - swapped.rejected_rewards, -(out.chosen_rewards - out.rejected_rewards)
    )


@pytest.mark.parametrize("spec", [s for s in PROPERTY_LOSSES if s.inputs is UNPAIRED], ids=lambda s: s.name)
@FAST
@given(data=st.data())
def test_swapping_labels_swaps_the_rewards(spec: LossSpec, data: st.DataObject) -> None:
    """An unpaired example's reward is its response's: relabelling it moves the reward to the other side."""
    stats = data.draw(stats_for(spec))
    out = spec(stats)
    swapped = spec(PreferenceStats(**{**vars(stats), "labels": ~stats.labels}))
    torch.testing.assert_close(swapped.chosen_rewards, out.rejected_rewards)
    torch.testing.assert_close(swapped.rejected_rewards, out.chosen_rewards)


@pytest.mark.parametrize(
    "spec", [s for s in PROPERTY_LOSSES if s.name not in NOT_PREFERENCE_MONOTONE], ids=lambda s: s.name
)
@FAST
@given(data=st.data())
def test_gradient_prefers_the_chosen_response(spec: LossSpec, data: st.DataObject) -> None:
    """Gradient descent never lowers the chosen input nor raises the rejected one:
    d loss/d chosen <= 0 <= d loss/d rejected (log-probs, scores, the best of K scores, or an unpaired
    response's log-prob by its label: desirable raised, undesirable lowered)."""
    stats = with_grad(data.draw(stats_for(spec)))
    spec(stats).losses.sum().backward()
    if spec.inputs is UNPAIRED:
        g = grad_of(stats, "policy_logps")
        chosen, rejected = g[stats.labels], g[~stats.labels]
    elif spec.inputs is LOGPS:
        chosen, rejected = grad_of(stats, "policy_chosen_logps"), grad_of(stats, "policy_rejected_logps")
    elif spec.inputs is SCORES:
        chosen, rejected = grad_of(stats, "chosen_scores"), grad_of(stats, "rejected_scores")
    else:
        g = grad_of(stats, "scores")  # (B, K)
        best = torch.zeros_like(g, dtype=torch.bool).scatter_(1, stats.best_index.unsqueeze(1), True)
        chosen, rejected = g[best], g[~best]
    assert (chosen <= 1e-6).all(), f"{spec.name}: d loss/d chosen > 0: {chosen}"
    assert (rejected >= -1e-6).all(), f"{spec.name}: d loss/d rejected < 0: {rejected}"


def test_exceptions_name_registered_losses() -> None:
    """The exception list stays in sync with the registry."""
    assert set(NOT_PREFERENCE_MONOTONE) <= set(PROPERTY_IDS)
