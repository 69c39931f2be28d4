"""Planted mistakes in online parts, and which properties of online_part_checks catch them (and which do not).

Each mutant is a copy of a registered part's spec with a wrong function; the test asserts that the property
meant to catch it fails on a small fixed batch, and records the properties that let it through.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from online_part_checks import (
    check_aggregation_splits,
    check_baseline_excludes_self,
    check_bounded_weights,
    check_centred,
    check_correction_cap,
    check_ratio_one_is_policy_gradient,
    check_token_mean_ignores_padding_and_rows,
    mask_of,
)

from alignkit.online.parts import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    POLICY_LOSSES,
    AdvantageOutput,
    PolicyLossOutput,
    broadcast,
)

MASK = mask_of([3, 1, 2])
LOGPS = torch.tensor([[-1.0, -0.5, -2.0], [-1.5, 0.0, 0.0], [-0.2, -0.9, 0.0]])
OLD = LOGPS - torch.tensor([[0.5, -0.5, 0.1], [0.6, 0.0, 0.0], [-0.4, 0.3, 0.0]])  # ratios e^0.5, e^-0.5, ...
ADV = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, 0.0], [-1.5, 1.0, 0.0]])
VALUES = torch.where(MASK, torch.tensor([[0.3, -1.2, 0.8], [2.0, 0.0, 0.0], [-0.7, 0.1, 0.0]]), 0.0)


def _mutant(registry, name, fn):
    return dataclasses.replace(registry.get(name), fn=fn)


def test_a_dropped_clip_is_caught_by_the_weight_bound_not_by_ratio_one():
    def unclipped(inputs, cfg):
        ratio = torch.exp(torch.where(inputs.mask, inputs.logps - inputs.old_logps, 0.0))
        per_token = torch.where(inputs.mask, -inputs.advantages * ratio, 0.0)
        return PolicyLossOutput(per_token, torch.zeros_like(inputs.mask), ratio.detach())

    mutant = _mutant(POLICY_LOSSES, "ppo_clip", unclipped)
    check_ratio_one_is_policy_gradient(mutant, LOGPS, ADV, MASK)  # passes: at ratio 1 nothing is clipped anyway
    check_bounded_weights(POLICY_LOSSES.get("ppo_clip"), LOGPS, OLD, ADV, MASK)  # the real one passes
    with pytest.raises(AssertionError, match="passes its bound"):
        check_bounded_weights(mutant, LOGPS, OLD, ADV, MASK)


def test_token_mean_computed_as_seq_mean_is_caught_by_the_row_layout_property():
    mutant = _mutant(AGGREGATIONS, "token_mean", AGGREGATIONS.get("seq_mean_token_mean").fn)
    check_aggregation_splits(mutant, VALUES, MASK, 1, 4.0)  # passes: a seq mean splits over micro-batches too
    with pytest.raises(AssertionError, match="tokens weigh unequally"):
        check_token_mean_ignores_padding_and_rows(mutant, VALUES, MASK, 4.0)


def test_an_aggregation_over_the_micro_batch_counts_is_caught_by_the_split_property():
    def local_mean(per_token, mask, sizes, cfg):
        return torch.where(mask, per_token, 0.0).sum() / mask.sum()

    mutant = _mutant(AGGREGATIONS, "token_mean", local_mean)
    check_token_mean_ignores_padding_and_rows(mutant, VALUES, MASK, 4.0)  # passes: one batch alone is right
    with pytest.raises(AssertionError):
        check_aggregation_splits(mutant, VALUES, MASK, 1, 4.0)


def test_a_group_baseline_that_includes_the_sample_is_caught_by_the_leave_one_out_property():
    def mean_of_all(inputs, cfg):
        grouped = inputs.scores.view(-1, inputs.group_size)
        return AdvantageOutput(broadcast((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1), inputs.mask))

    mutant = _mutant(ADVANTAGES, "rloo", mean_of_all)
    scores = torch.tensor([1.0, 0.0, 3.0, -1.0, 2.0, 2.5])
    check_centred(mutant, scores, 3)  # passes: r - mean(r) still sums to 0 per group
    check_baseline_excludes_self(ADVANTAGES.get("rloo"), scores, 3, 1, 2.0)
    with pytest.raises(AssertionError, match="includes the sample itself"):
        check_baseline_excludes_self(mutant, scores, 3, 1, 2.0)


def test_an_uncapped_importance_weight_is_caught_by_the_cap_property():
    def uncapped(trainer, sampler, mask, cfg):
        return torch.where(mask, torch.exp(trainer - sampler), 0.0)

    mutant = _mutant(CORRECTIONS, "tis", uncapped)
    sampler = LOGPS - 1.0  # every weight e = 2.7 > the default cap 2
    with pytest.raises(AssertionError, match="passes the cap"):
        check_correction_cap(mutant, LOGPS, sampler, MASK)


def test_gmpo_without_its_clip_or_with_the_clip_of_the_wrong_sign_is_caught_by_the_weight_bound():
    """GMPO caps a token's log-ratio where A > 0; a geometric mean of raw ratios, or the floor (A < 0's clip)
    applied to A > 0, lets a positive-advantage token's gradient grow past e^eps_high x |A|."""

    def geometric(clip):
        def fn(inputs, cfg):  # GMPO's token form with the given clip of the log-ratios, every token free
            m = inputs.mask
            kept = clip(torch.where(m, inputs.logps.detach() - inputs.old_logps, 0.0), cfg)
            mean = torch.where(m, kept, 0.0).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True)
            ratio = torch.exp(mean + torch.where(m, inputs.logps - inputs.logps.detach(), 0.0))
            return PolicyLossOutput(torch.where(m, -inputs.advantages * ratio, 0.0), torch.zeros_like(m),
                                    ratio.detach())
        return fn

    old = LOGPS - torch.where(MASK, 1.5, 0.0)  # every ratio e^1.5, far past e^0.4
    adv = torch.where(MASK, 1.0, 0.0)
    check_bounded_weights(POLICY_LOSSES.get("gmpo"), LOGPS, old, adv, MASK)  # the real one passes
    for wrong in (lambda d, cfg: d, lambda d, cfg: d.clamp(min=-cfg.clip_low)):
        mutant = _mutant(POLICY_LOSSES, "gmpo", geometric(wrong))
        check_ratio_one_is_policy_gradient(mutant, LOGPS, ADV, MASK)  # passes: at ratio 1 nothing is clipped
        with pytest.raises(AssertionError, match="passes its bound"):
            check_bounded_weights(mutant, LOGPS, old, adv, MASK)
