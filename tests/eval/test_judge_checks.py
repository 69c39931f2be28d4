"""Can the judge be trusted? Position bias and agreement with a data set's labels on hand-made verdict
tables, the warnings, the both-orders probability rule, and the `eval.baselines` settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from alignkit.eval.agreement import LabelledPair, judge_agreement, labelled_pairs
from alignkit.eval.config import EvalConfig, LocalJudgeConfig
from alignkit.eval.judges import Judge, JudgedPair, Verdict
from alignkit.eval.position_bias import judge_warnings, position_bias
from alignkit.eval.stats import Interval


def _pairs(table, rule="agree"):
    """Pairs from (verdict with the policy first, verdict with the policy second) letters."""
    return [JudgedPair("p", "x", "y", Verdict(a), Verdict(b), rule=rule) for a, b in table]


def test_position_bias_by_hand():
    # 5 pairs: consistent for the policy, consistent for the baseline, "A" twice (position), "B" twice,
    # and one with an unreadable verdict (left out of the flips, its valid verdict still counted).
    bias = position_bias(_pairs([("A", "B"), ("B", "A"), ("A", "A"), ("B", "B"), (None, "A")]))
    assert bias.pairs == 4 and bias.verdicts == 9
    assert bias.flip_rate == 2 / 4  # ("A", "A") and ("B", "B") change the preferred response
    assert bias.first_position_rate == 5 / 9  # A: 1 + 1 + 2 + 1 of the 9 letters
    assert bias.most_common == "A" and bias.same_verdict_rate == 5 / 9


def test_ties_flip_only_when_one_order_names_a_response():
    bias = position_bias(_pairs([("tie", "tie"), ("tie", "B"), ("A", "tie")]))
    assert bias.flip_rate == 2 / 3
    assert bias.first_position_rate == 1 / 2  # one A and one B among the letters that name a response
    assert bias.most_common == "tie" and bias.same_verdict_rate == 4 / 6


def test_no_valid_verdict_has_no_rates():
    bias = position_bias(_pairs([(None, None)]))
    assert (bias.pairs, bias.flip_rate, bias.first_position_rate, bias.same_verdict_rate) == (0, None, None, None)
    assert judge_warnings(bias, max_flip_rate=0.0, max_same_verdict_rate=0.5) == []


def test_warnings_at_their_thresholds():
    always_a = position_bias(_pairs([("A", "A")] * 4))
    warnings = judge_warnings(always_a, max_flip_rate=0.4, max_same_verdict_rate=0.95)
    assert len(warnings) == 2
    assert "near-constant judge: 100% of its 8 valid verdicts are 'A'" in warnings[0]
    assert "flips in 100% of 4 pairs" in warnings[1]
    fair = position_bias(_pairs([("A", "B"), ("B", "A"), ("A", "B"), ("A", "A")]))  # flips 1/4, A 4/8
    assert judge_warnings(fair, max_flip_rate=0.25, max_same_verdict_rate=0.95) == []  # at the limit: no warning
    assert "flips in 25% of 4 pairs" in judge_warnings(fair, max_flip_rate=0.2, max_same_verdict_rate=0.95)[0]
    chance = judge_warnings(fair, max_flip_rate=1, max_same_verdict_rate=1, agreement=Interval(0.6, 0.5, 0.7))
    assert len(chance) == 1 and "not distinguishable from chance" in chance[0]
    assert judge_warnings(fair, max_flip_rate=1, max_same_verdict_rate=1, agreement=Interval(0.7, 0.55, 0.8)) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "tie", None]), st.sampled_from(["A", "B", "tie", None])),
                min_size=1, max_size=30))
def test_swapping_the_two_orders_keeps_the_flips_and_mirrors_the_first_position(table):
    bias = position_bias(_pairs(table))
    mirrored = position_bias(_pairs([(b, a) for a, b in table]))  # the same judge, the pairs' sides exchanged
    assert bias.flip_rate == mirrored.flip_rate
    assert bias.first_position_rate == mirrored.first_position_rate
    # Relabelling the letters (A <-> B) mirrors the first-position rate around 1/2.
    swap = {"A": "B", "B": "A", "tie": "tie", None: None}
    relabelled = position_bias(_pairs([(swap[a], swap[b]) for a, b in table]))
    if bias.first_position_rate is not None:
        assert relabelled.first_position_rate == pytest.approx(1 - bias.first_position_rate)
    assert relabelled.flip_rate == bias.flip_rate


def test_mean_probability_rule_by_hand():
    # P(A) = 0.8 with the policy first, P(A) = 0.6 with it second: P(policy) = (0.8 + 0.4) / 2 = 0.6.
    first, second = Verdict("A", margin=math.log(0.8 / 0.2)), Verdict("A", margin=math.log(0.6 / 0.4))
    pair = JudgedPair("p", "x", "y", first, second, rule="mean_probability")
    assert pair.policy_probability == pytest.approx(0.6)
    assert pair.score == 1.0 and not pair.consistent  # position-biased, yet the policy wins on average
    assert JudgedPair("p", "x", "y", first, second).score == 0.5  # the both-agree rule calls it a tie
    lean = JudgedPair("p", "x", "y", Verdict("A", margin=math.log(3)), Verdict("A", margin=math.log(3)),
                      rule="mean_probability")
    assert lean.policy_probability == pytest.approx(0.5) and lean.score == 0.5
    # The same lean read twice in float32 differs by an ulp or so: still a tie, on every CPU.
    ulp_apart = JudgedPair("p", "x", "y", Verdict("A", margin=1.0986123),
                           Verdict("A", margin=1.0986124), rule="mean_probability")
    assert ulp_apart.policy_probability != 0.5 and ulp_apart.score == 0.5
    # A real preference, however small, is not swallowed: 1e-4 in margin moves p by 2.5e-5.
    assert JudgedPair("p", "x", "y", Verdict("A", margin=1.0987), Verdict("A", margin=1.0986),
                      rule="mean_probability").score == 1.0
    broken = JudgedPair("p", "x", "y", Verdict(None, error="nan"), second, rule="mean_probability")
    assert broken.policy_probability is None and broken.score == 0.5
    # Extreme margins do not overflow: certain of "A" in both orders is a lean, not a preference.
    assert JudgedPair("p", "x", "y", Verdict("A", margin=800.0), Verdict("A", margin=800.0),
                      rule="mean_probability").policy_probability == 0.5
    assert JudgedPair("p", "x", "y", Verdict("B", margin=-800.0), Verdict("A", margin=800.0),
                      rule="mean_probability").policy_probability == 0.0


class _Scripted(Judge):
    """Answers from a table keyed by (A, B): the verdicts a test writes out by hand."""

    def __init__(self, table):
        self.table = table

    def compare(self, prompt, response_a, response_b):
        return Verdict(self.table[(response_a, response_b)])


def test_agreement_by_hand():
    pairs = [LabelledPair(f"p{i}", f"good{i}", f"bad{i}") for i in range(4)]
    table = {}
    for i, (first, second) in enumerate([("A", "B"), ("A", "B"), ("B", "A"), ("A", "A")]):
        table[(f"good{i}", f"bad{i}")], table[(f"bad{i}", f"good{i}")] = first, second
    entry, judged = judge_agreement(_Scripted(table), pairs, seed=0)
    scores = [1.0, 1.0, 0.0, 0.5]
    assert entry["n"] == 4 and entry["agreement"]["estimate"] == pytest.approx(np.mean(scores))
    idx = np.random.default_rng(0).integers(0, 4, size=(1000, 4))  # the bootstrap, written out
    means = np.asarray(scores)[idx].mean(-1)
    assert entry["agreement"]["low"] == pytest.approx(np.quantile(means, 0.025))
    assert entry["agreement"]["high"] == pytest.approx(np.quantile(means, 0.975))
    assert (entry["agree_both_orders"], entry["disagree_both_orders"]) == (0.5, 0.25)
    assert entry["position_bias"]["flip_rate"] == 0.25 and [p.score for p in judged] == scores
    with pytest.raises(ValueError, match="no labelled pairs"):
        judge_agreement(_Scripted(table), [])


def test_labelled_pairs_keep_text_pairs_with_a_label(hh_path):
    from alignkit.data.config import HHRLHFSource
    from alignkit.data.sources import load_examples
    from alignkit.data.types import PreferenceExample

    examples, _ = load_examples(HHRLHFSource(path=str(hh_path)))
    pairs = labelled_pairs(examples)
    assert len(pairs) == len({e.prompt for e in examples}) and all(p.preferred != p.other for p in pairs)
    assert any(p.prompt.count("Human:") > 1 for p in pairs)  # multi-turn dialogues are judged as they are
    odd = [PreferenceExample([{"role": "user", "content": "hi"}], "a", "b"),  # messages: no text prompt
           PreferenceExample("q", " same ", "same"), PreferenceExample("q", "a", "b"), PreferenceExample("q", "c", "d")]
    assert labelled_pairs(odd) == [LabelledPair("q", "a", "b")]


def test_baselines_settings():
    assert EvalConfig().baselines == ["reference"]
    assert EvalConfig(baselines=["chosen", "base"]).baselines == ["chosen", "base"]
    assert EvalConfig.model_validate({"baseline": "chosen"}).baselines == ["chosen"]  # the old field still reads
    assert "baseline" not in EvalConfig.model_validate({"baseline": "chosen"}).model_dump()
    with pytest.raises(ValidationError, match=r"eval.baseline \('chosen'\) is the old .*eval.baselines=\[chosen\]"):
        EvalConfig.model_validate({"baseline": "chosen", "baselines": ["reference"]})
    with pytest.raises(ValidationError, match="names base more than once"):
        EvalConfig(baselines=["base", "chosen", "base"])
    with pytest.raises(ValidationError, match="baselines"):
        EvalConfig(baselines=["untuned"])
    with pytest.raises(ValidationError, match="baselines"):
        EvalConfig(baselines=[])
    with pytest.raises(ValidationError, match="verdict"):
        LocalJudgeConfig(kind="local", model="m", verdict="vote")
    with pytest.raises(ValidationError, match="max_flip_rate"):
        LocalJudgeConfig(kind="local", model="m", max_flip_rate=1.5)
