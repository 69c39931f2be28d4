"""Hand-worked cases for answer extraction and every verifiable reward, malformed completions included."""

from __future__ import annotations

import pytest

from alignkit.models.answers import (
    answers_equal,
    extract_answer,
    extract_boxed,
    extract_gsm8k,
    extract_last_number,
    extract_regex,
    extract_tags,
    normalise_answer,
)
from alignkit.models.reward_mix import group_normalise, weighted_sum
from alignkit.models.rewards import (
    RewardBreakdown,
    RewardError,
    RewardExample,
    get_reward,
    resolve_example_reward,
    resolve_reward,
    unknown_settings,
)
from alignkit.models.verifiable import repeated_ngram_fraction, soft_overlong_penalty


def ex(completion: str, answer: str | None = "72", **meta) -> RewardExample:
    return RewardExample("Q?", completion, {"answer": answer, **meta} if answer is not None else meta)


# ---- extraction -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("She has 72 apples.\n#### 72", "72"),
    ("#### 72\nand again\n#### 72.0", "72"),  # the same answer twice counts once
    ("#### 3 #### 4", None),  # two different answers on one line
    ("#### 3\n#### 4", None),  # two different answers: no answer
    ("no marker, 72", None),
    ("#### ７２", "72"),  # full-width digits (NFKC)
])
def test_gsm8k_extraction(text, expected):
    assert extract_gsm8k(text) == expected


def test_boxed_extraction_keeps_nested_braces_and_refuses_unclosed_or_two():
    assert extract_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{3} \boxed{4}") is None
    assert extract_boxed(r"\boxed{3} then \boxed{3}") == "3"
    assert extract_boxed(r"\boxed{\frac{1}{2}") is None  # never closed
    assert extract_boxed("nothing") is None


def test_tags_last_number_and_regex():
    assert extract_tags("think... <answer> 12 </answer>") == "12"
    assert extract_tags("<answer>1</answer><answer>2</answer>") is None
    assert extract_last_number("first 3, then 1,234.") == "1,234"
    assert extract_last_number("it is -3.5") == "-3.5"
    assert extract_last_number("no digits at all") is None
    assert extract_regex("Answer: 17", r"Answer:\s*(\d+)") == "17"
    assert extract_answer("Answer: 17", "regex", r"Answer:\s*(\d+)") == "17"
    with pytest.raises(ValueError, match="regex needs a pattern"):
        extract_answer("x", "regex")
    with pytest.raises(ValueError, match="unknown way 'nope'"):
        extract_answer("x", "nope")


def test_equal_answers_written_differently():
    for a, b in [("72", "72.0"), ("$1,000", "1000"), ("72.50", "72.5"), ("-0", "0"), ("Paris.", "paris"),
                 ("１２", "12")]:
        assert answers_equal(a, b), (a, b)
    assert not answers_equal("72", "73")
    assert not answers_equal(None, "72")


def test_huge_numbers_and_odd_text_never_raise():
    huge = "9" * 5000  # int() refuses more than 4300 digits
    assert normalise_answer(huge) == huge  # compared as text
    assert answers_equal(huge, huge) and not answers_equal(huge, huge[:-1] + "8")
    assert extract_gsm8k(f"#### {huge}") == huge
    broken = "caf\udce9 #### 5"  # a lone surrogate, as surrogateescape decodes a non-UTF-8 byte
    assert extract_gsm8k(broken) == "5"
    assert extract_last_number("\ufffd\x00\u200b 8") == "8"


# ---- rewards -------------------------------------------------------------------------------------------
def test_exact_match_reward_hand_worked():
    fn = get_reward("exact_match")
    out = fn([ex("so #### 72"), ex("#### 72.0"), ex("#### 71"), ex("72 without marker"), ex("#### 72\n#### 73"),
              ex("#### " + "9" * 5000)])
    assert out == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert fn([ex("the answer is 72")], extract="last_number") == [1.0]


def test_a_reward_without_reference_answers_names_the_source_kinds():
    with pytest.raises(RewardError, match="gsm8k_jsonl or reasoning_gym"):
        get_reward("exact_match")([ex("#### 1", answer=None)])


def test_format_reward():
    fn = get_reward("format")
    assert fn([ex("<answer>3</answer>"), ex("3"), ex("<answer>3</answer><answer>4</answer>")]) == [1.0, 0.0, 0.0]
    assert fn([ex("#### 3")], extract="gsm8k") == [1.0]


def test_math_verify_reward_equal_but_written_differently():
    pytest.importorskip("math_verify")
    fn = get_reward("math_verify")
    half = [ex(r"so \boxed{\frac{1}{2}}", "0.5"), ex(r"\boxed{0.5}", r"\frac12"), ex(r"\boxed{1/2}", "0.5"),
            ex(r"\boxed{0.6}", "0.5"), ex("no box 0.5", "0.5"), ex(r"\boxed{2}\boxed{3}", "2")]
    assert fn(half) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert fn([ex("so it is 0.5", "1/2")], extract="none") == [1.0]
    huge = "9" * 5000
    assert fn([ex(rf"\boxed{{{huge}}}", huge), ex(r"\boxed{caf\udce9}", "5")]) == [1.0, 0.0]
    # As a run calls it: in a thread of its own under the time limit (math-verify's own timeouts need the main thread).
    assert resolve_example_reward("math_verify", timeout_s=60)[1]([ex(r"\boxed{0.5}", "1/2")]) == [1.0]


def test_soft_overlong_penalty_hand_worked():
    # L_max = 10, L_cache = 4: 0 up to 6, then (6 - L) / 4, -1 past 10.
    assert [soft_overlong_penalty(n, 10, 4) for n in (0, 6, 7, 8, 10, 11, 1000)] == [0.0, 0.0, -0.25, -0.5, -1.0,
                                                                                        -1.0, -1.0]
    with pytest.raises(ValueError, match="0 < cache <= max_length"):
        soft_overlong_penalty(1, 4, 5)
    assert get_reward("overlong_penalty")([ex("x" * 7)], max_length=10, cache=4) == [-0.25]


def test_repetition_penalty_hand_worked():
    # "a b a b a b": bigrams ab ba ab ba ab -> 2 distinct of 5: 3/5 repeat.
    assert repeated_ngram_fraction("a b a b a b", 2) == pytest.approx(0.6)
    assert repeated_ngram_fraction("one two three", 3) == 0.0
    assert repeated_ngram_fraction("short", 3) == 0.0
    assert get_reward("repetition_penalty")([ex("a b a b a b")], n=2) == [pytest.approx(-0.6)]


def test_group_normalise_and_weighted_sum_hand_worked():
    # group p: [1, 0] -> mean 0.5, std 0.5 -> [1, -1]; group q: [1, 1] -> [0, 0]
    assert group_normalise([1.0, 0.0, 1.0, 1.0], ["p", "p", "q", "q"], eps=0.0) == [1.0, -1.0, 0.0, 0.0]
    parts = {"a": [1.0, 0.0], "b": [-1.0, -3.0]}
    assert weighted_sum(parts, {"a": 2.0, "b": 0.5}) == [1.5, -1.5]
    # normalised: a -> [1, -1], b -> [1, -1]; 2 * a + 0.5 * b
    assert weighted_sum(parts, {"a": 2.0, "b": 0.5}, groups=["p", "p"]) == pytest.approx([2.5, -2.5], abs=1e-5)


def test_text_rewards_work_unchanged_and_example_rewards_are_refused_where_texts_only_are_given():
    name, fn = resolve_example_reward("vader_sentiment")
    assert fn([ex("I love it"), ex("I hate it")]) == resolve_reward("vader_sentiment")[1](["I love it", "I hate it"])
    with pytest.raises(RewardError, match="reads each example's prompt and metadata"):
        resolve_reward("exact_match")


def test_settings_are_checked_by_name():
    assert unknown_settings("exact_match", {"extract": "boxed"}) is None
    assert "has no setting 'max_len'" in unknown_settings("overlong_penalty", {"max_len": 3})
    assert "takes no settings" in unknown_settings("vader_sentiment", {"x": 1})
    with pytest.raises(RewardError, match="has no setting"):
        resolve_example_reward("exact_match", settings={"bogus": 1})


def test_a_breakdown_passes_through_checked_or_gives_its_total_to_text_callers():
    from alignkit.models.rewards import REWARDS, register_reward

    if "two_parts" not in REWARDS:
        @register_reward("two_parts")
        def two_parts(texts):
            return RewardBreakdown([1.0] * len(texts), {"x": [2.0] * len(texts), "short": [0.0]})

    out = resolve_example_reward("two_parts")[1]([ex("a")])
    assert isinstance(out, RewardBreakdown) and out.total == [1.0] and out.components["x"] == [2.0]
    assert resolve_reward("two_parts")[1](["a"]) == [1.0]  # text-only callers get the total
    with pytest.raises(RewardError, match="'two_parts/short' returned 1 values for 2 texts"):
        resolve_example_reward("two_parts")[1]([ex("a"), ex("b")])
