"""Hypothesis properties over every registered online part, the example plugin's included.

The example plugin (examples/my_online_parts.py) is loaded first, so its advantage and policy loss are checked
like the built-ins; a part registered later by another plugin is picked up the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from online_part_checks import (
    check_aggregation_splits,
    check_baseline_excludes_self,
    check_bounded_weights,
    check_centred,
    check_correction_cap,
    check_kl_estimator,
    check_ratio_one_is_policy_gradient,
    check_seq_mean_weighs_sequences_equally,
    check_token_mean_ignores_padding_and_rows,
    mask_of,
)

from alignkit.online.parts import ADVANTAGES, AGGREGATIONS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES
from alignkit.plugins import load_plugin

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "my_online_parts.py"
load_plugin(str(PLUGIN))

FAST = settings(max_examples=25, deadline=None)


@st.composite
def token_batches(draw, spread: float = 1.0):
    """(logps, old, advantages, mask): B rows of random lengths, padding holding junk."""
    lengths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = mask_of(lengths)
    logps = -torch.rand(mask.shape, generator=g) * 3
    old = logps + spread * torch.randn(mask.shape, generator=g)
    adv = torch.randn(mask.shape, generator=g)
    junk = torch.full(mask.shape, 123.0)
    return torch.where(mask, logps, junk), torch.where(mask, old, junk), torch.where(mask, adv, junk), mask


def test_the_registries_hold_the_promised_parts_and_the_plugin():
    assert {"gae", "grpo", "dr_grpo", "rloo", "reinforce", "reinforce_pp", "group_median"} <= set(ADVANTAGES)
    assert {"ppo_clip", "dapo", "gspo", "cispo", "sapo", "vanilla_pg", "tanh_ratio"} <= set(POLICY_LOSSES)
    assert set(AGGREGATIONS) >= {"token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"}
    assert set(KL_ESTIMATORS) >= {"k1", "k2", "k3"} and set(CORRECTIONS) >= {"none", "tis", "mis", "seq_mask"}


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@FAST
@given(batch=token_batches())
def test_at_ratio_one_every_policy_loss_is_the_policy_gradient(name, batch):
    logps, _, adv, mask = batch
    check_ratio_one_is_policy_gradient(POLICY_LOSSES.get(name), logps, adv, mask)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@FAST
@given(batch=token_batches(spread=1.5))
def test_no_token_gradient_passes_its_declared_bound(name, batch):
    logps, old, adv, mask = batch
    check_bounded_weights(POLICY_LOSSES.get(name), logps, old, adv, mask)


@st.composite
def per_token_losses(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = mask_of(lengths)
    values = torch.where(mask, torch.randn(mask.shape, generator=g), torch.full(mask.shape, -9.0))
    return values, mask, draw(st.integers(1, len(lengths) - 1))


@pytest.mark.parametrize("name", AGGREGATIONS.names())
@FAST
@given(batch=per_token_losses())
def test_micro_batches_add_up_to_the_whole_batch(name, batch):
    values, mask, cut = batch
    check_aggregation_splits(AGGREGATIONS.get(name), values, mask, cut, max_tokens=8.0)


@FAST
@given(batch=per_token_losses())
def test_token_mean_ignores_padding_and_weighs_every_token_the_same(batch):
    values, mask, _ = batch
    check_token_mean_ignores_padding_and_rows(AGGREGATIONS.get("token_mean"), values, mask, max_tokens=8.0)


@FAST
@given(batch=per_token_losses())
def test_seq_mean_token_mean_weighs_every_sequence_the_same(batch):
    values, mask, _ = batch
    check_seq_mean_weighs_sequences_equally(AGGREGATIONS.get("seq_mean_token_mean"), values, mask, max_tokens=8.0)


@st.composite
def grouped_scores(draw):
    k = draw(st.integers(2, 5))
    groups = draw(st.integers(1, 3))
    scores = draw(st.lists(st.floats(-5, 5, width=32), min_size=k * groups, max_size=k * groups))
    return torch.tensor(scores, dtype=torch.float32), k


CENTRED = [n for n in ADVANTAGES.names() if ADVANTAGES.get(n).extra.get("centred")]
EXCLUDES_SELF = [n for n in ADVANTAGES.names() if ADVANTAGES.get(n).extra.get("baseline_excludes_self")]


def test_the_promises_are_declared_where_they_hold():
    assert {"grpo", "dr_grpo", "rloo", "reinforce"} <= set(CENTRED) and "rloo" in EXCLUDES_SELF


@pytest.mark.parametrize("name", CENTRED)
@FAST
@given(data=grouped_scores())
def test_group_advantages_sum_to_zero(name, data):
    scores, k = data
    check_centred(ADVANTAGES.get(name), scores, k)


@pytest.mark.parametrize("name", EXCLUDES_SELF)
@FAST
@given(data=grouped_scores(), shift=st.floats(0.5, 3.0), pick=st.integers(0, 100))
def test_a_leave_one_out_baseline_never_sees_its_own_sample(name, data, shift, pick):
    scores, k = data
    check_baseline_excludes_self(ADVANTAGES.get(name), scores, k, pick % scores.numel(), shift)


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
@FAST
@given(batch=token_batches(spread=2.0))
def test_kl_estimators_vanish_at_equality_and_k2_k3_are_nonnegative(name, batch):
    logps, old, _, _ = batch
    check_kl_estimator(KL_ESTIMATORS.get(name), logps, old)


@pytest.mark.parametrize("name", CORRECTIONS.names())
@FAST
@given(batch=token_batches(spread=1.0))
def test_importance_weights_never_exceed_their_cap(name, batch):
    logps, old, _, mask = batch
    check_correction_cap(CORRECTIONS.get(name), logps, old, mask)
