"""Objectives: parsing a recipe's loss section, weighted sums, and errors that name the path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_cases import fixed_batch, logps_stats, single_thread

from alignkit.losses import (
    KWAY,
    LOGPS,
    LossTerm,
    Objective,
    ObjectiveError,
    PreferenceStats,
    build_objective,
    get_loss,
)
from alignkit.losses.dpo import DPOConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@settings(max_examples=30, deadline=None)
@given(
    stats=logps_stats(),
    w1=st.floats(0.01, 10), w2=st.floats(0.01, 10),
    beta=st.floats(0.01, 5), delta=st.floats(0, 5),
)
def test_composition_is_the_weighted_sum_of_its_parts(
    stats: PreferenceStats, w1: float, w2: float, beta: float, delta: float
) -> None:
    obj = build_objective([
        {"name": "dpo", "weight": w1, "beta": beta},
        {"name": "slic_hf", "weight": w2, "delta": delta},
        {"name": "sft"},
    ])
    dpo = get_loss("dpo")(stats, DPOConfig(beta=beta))
    slic = get_loss("slic_hf")(stats, get_loss("slic_hf").config(delta=delta))
    sft = get_loss("sft")(stats)
    out = obj(stats)
    torch.testing.assert_close(out.losses, w1 * dpo.losses + w2 * slic.losses + sft.losses)
    torch.testing.assert_close(out.chosen_rewards, dpo.chosen_rewards)  # rewards of the first term
    torch.testing.assert_close(out.metrics["slic_hf/hinge"], slic.metrics["hinge"])
    torch.testing.assert_close(out.metrics["sft/loss"], sft.losses)


def test_single_term_behaves_like_the_loss() -> None:
    stats = fixed_batch()
    obj = build_objective({"name": "dpop", "beta": 0.2})
    ref = get_loss("dpop")(stats, get_loss("dpop").config(beta=0.2))
    out = obj(stats)
    torch.testing.assert_close(out.losses, ref.losses)
    assert set(out.metrics) == {"penalty"}  # a lone term's metrics keep their names
    assert obj.needs_reference and obj.inputs is LOGPS and obj.name == "dpop"


def test_repeated_names_get_distinct_metric_prefixes() -> None:
    obj = build_objective([{"name": "dpop"}, {"name": "dpop", "penalty_weight": 0.0}])
    out = obj(fixed_batch())
    assert {"dpop0/penalty", "dpop1/penalty", "dpop0/loss", "dpop1/loss"} <= set(out.metrics)


def test_needs_reference_and_inputs() -> None:
    assert not build_objective([{"name": "simpo"}, {"name": "sft"}]).needs_reference
    assert build_objective([{"name": "sft"}, {"name": "dpo", "weight": 0.5}]).needs_reference
    assert build_objective("reward_kway").inputs is KWAY
    with pytest.raises(ObjectiveError, match=r"dpo reads 'logps', reward_bt reads 'scores'"):
        build_objective([{"name": "dpo"}, {"name": "reward_bt"}])


def test_round_trip_through_to_section() -> None:
    obj = build_objective([{"name": "dpo", "beta": 0.3}, {"name": "sft", "weight": 0.1}])
    section = obj.to_section()
    assert section[0] == {"name": "dpo", "weight": 1.0, "beta": 0.3, "label_smoothing": 0.0, "robust": False,
                          "reference_free": False}
    again = build_objective(section)
    assert [t.config for t in again.terms] == [t.config for t in obj.terms]
    assert again.name == "dpo+0.1*sft"
    assert again.describe() == "dpo(beta=0.3) + 0.1*sft"
    assert build_objective("dpo").describe() == "dpo"
    assert build_objective("ipo").to_section()["average_log_prob"] is True


@pytest.mark.parametrize(
    "section, message",
    [
        ({"name": "dpoo"}, r"^loss\.name: unknown loss 'dpoo'; registered: .*dpo"),
        ({"beta": 0.1}, r"^loss\.name: required, one of: "),
        ([{"name": "sft"}, {"name": "dpo", "beta": 0}], r"^loss\[1\]\.beta: Input should be greater than 0"),
        ({"name": "dpo", "bta": 0.1}, r"^loss\.bta: unknown parameter of loss 'dpo'; its parameters: beta, "),
        ({"name": "dpo", "label_smoothing": 0.5}, r"^loss\.label_smoothing: Input should be less than 0\.5"),
        ({"name": "dpo", "beta": "high"}, r"^loss\.beta: Input should be a valid number"),
        ({"name": "simpo", "gamma": 1, "gamma_beta_ratio": 0.5}, r"^loss: give either gamma or gamma_beta_ratio"),
        ({"name": "dpo", "weight": -1}, r"^loss\.weight: must be a finite number > 0, got -1"),
        ({"name": "dpo", "weight": "1"}, r"^loss\.weight: must be a finite number > 0"),
        ([], r"^loss: an empty list"),
        ([{"name": "dpo"}, 3], r"^loss\[1\]: expected a mapping"),
        (3, r"^loss: expected a loss name, a mapping"),
    ],
)
def test_errors_name_the_path(section, message: str) -> None:
    with pytest.raises(ObjectiveError, match=message):
        build_objective(section)


def test_error_path_prefix_is_configurable() -> None:
    with pytest.raises(ObjectiveError, match=r"^stage2\.loss\[0\]\.beta"):
        build_objective([{"name": "dpo", "beta": -1}], path="stage2.loss")


def test_several_errors_are_all_reported() -> None:
    with pytest.raises(ObjectiveError) as info:
        build_objective({"name": "dpo", "beta": 0, "label_smoothing": 0.7})
    assert "loss.beta" in str(info.value) and "loss.label_smoothing" in str(info.value)


def test_loss_term_validates_programmatic_use() -> None:
    assert LossTerm("dpo").config == DPOConfig()
    with pytest.raises(ObjectiveError, match="takes a DPOConfig"):
        LossTerm("dpo", 1.0, get_loss("ipo").config())
    with pytest.raises(ObjectiveError, match="unknown loss 'nope'"):
        LossTerm("nope")
    with pytest.raises(ObjectiveError, match="weight"):
        LossTerm("dpo", float("nan"))
    with pytest.raises(ObjectiveError, match="at least one term"):
        Objective([])
