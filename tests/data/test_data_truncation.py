"""data.prompt_truncation: hand-worked cuts of small token sequences in both modes, and how they are counted.

Token ids: prompt 1..n, chosen 11.., rejected 21.., EOS 9, BOS 0. Unless a case says otherwise,
max_length = 10 and max_prompt_length = 4.
"""

from __future__ import annotations

import pytest

from alignkit.data import DataConfig, PreferenceExample, tokenize_pairs
from alignkit.data.truncation import (
    IDENTICAL_AFTER_TRUNCATION,
    PROMPT_CUT,
    RESPONSE_CUT,
    TruncatedPair,
    truncate_pair,
    truncation_counts,
)
from alignkit.data.types import PROMPT_TOO_LONG, DropReport

EOS, BOS = 9, 0
P6 = [1, 2, 3, 4, 5, 6]


def cut(prompt: list[int], responses: list[list[int]], mode, max_length: int = 10, max_prompt_length: int = 4,
        bos: int | None = None) -> TruncatedPair | None:
    """``mode`` is left untyped: one test passes a value outside PromptTruncation on purpose."""
    return truncate_pair(prompt, responses, max_length, max_prompt_length, EOS, bos, mode)


def test_a_pair_that_fits_keeps_its_whole_prompt_only_when_needed() -> None:
    """6 prompt + 3 (11, 12, EOS) = 9 <= 10: it fits.

    always:      prompt 6 > 4 → its last 4 tokens [3, 4, 5, 6]; responses fit in 10 − 4 = 6.
    when_needed: nothing is cut.
    """
    responses = [[11, 12], [21]]
    assert cut(P6, responses, "always") == ([3, 4, 5, 6], [[11, 12, EOS], [21, EOS]], True, False)
    assert cut(P6, responses, "when_needed") == (P6, [[11, 12, EOS], [21, EOS]], False, False)


def test_exact_fit_and_one_token_over() -> None:
    """6 + 4 (11, 12, 13, EOS) = 10 = max_length: fits exactly, kept whole.

    One more chosen token, 6 + 5 = 11 > 10: the prompt is cut to [3, 4, 5, 6]; the chosen (5 tokens)
    then fits in 10 − 4 = 6, so no response is cut.
    """
    assert cut(P6, [[11, 12, 13], [21]], "when_needed") == (P6, [[11, 12, 13, EOS], [21, EOS]], False, False)
    over = cut(P6, [[11, 12, 13, 14], [21]], "when_needed")
    assert over == ([3, 4, 5, 6], [[11, 12, 13, 14, EOS], [21, EOS]], True, False)
    assert over == cut(P6, [[11, 12, 13, 14], [21]], "always")


def test_too_long_even_after_the_prompt_is_cut_cuts_the_response() -> None:
    """Chosen 11..18 + EOS = 9 tokens: prompt cut to 4, the chosen to 10 − 4 = 6 (11..16, EOS lost)."""
    out = cut(P6, [[11, 12, 13, 14, 15, 16, 17, 18], [21]], "when_needed")
    assert out == ([3, 4, 5, 6], [[11, 12, 13, 14, 15, 16], [21, EOS]], True, True)


def test_a_short_prompt_is_never_cut_and_the_response_gets_the_rest() -> None:
    """Prompt [1, 2] (within 4) + 11 response tokens > 10: only the response is cut, to 10 − 2 = 8.

    (The reference implementation would cut it to max_length − max_prompt_length = 6.)
    """
    chosen = list(range(11, 21))
    for mode in ("always", "when_needed"):
        assert cut([1, 2], [chosen, [21]], mode) == ([1, 2], [chosen[:8], [21, EOS]], False, True)


def test_a_prompt_longer_than_max_length() -> None:
    """12 prompt tokens > max_length 10: both modes keep its last 4, and responses get 6."""
    prompt = list(range(1, 13))
    for mode in ("always", "when_needed"):
        assert cut(prompt, [[11], [21]], mode) == ([9, 10, 11, 12], [[11, EOS], [21, EOS]], True, False)


def test_no_room_for_a_response_is_none_unless_the_pair_fits() -> None:
    """max_prompt_length = max_length = 4: a cut prompt leaves 0 response tokens → None (dropped).

    when_needed never cuts a pair that fits: [1] + (11, EOS) = 3 <= 4 is kept whole.
    """
    prompt = list(range(1, 13))
    for mode in ("always", "when_needed"):
        assert cut(prompt, [[11], [21]], mode, max_length=4, max_prompt_length=4) is None
    assert cut([1], [[11], [21]], "always", max_length=4, max_prompt_length=4) == ([1], [[11, EOS], [21, EOS]],
                                                                                 False, False)
    assert cut(P6, [[11], [21]], "when_needed", max_length=4, max_prompt_length=4) is None


def test_bos_counts_in_both_limits() -> None:
    """BOS + 6 + 3 = 10: fits. always keeps BOS and the last 3 prompt tokens (BOS is one of the 4)."""
    assert cut(P6, [[11, 12], [21]], "when_needed", bos=BOS) == ([BOS, *P6], [[11, 12, EOS], [21, EOS]], False, False)
    assert cut(P6, [[11, 12], [21]], "always", bos=BOS) == ([BOS, 4, 5, 6], [[11, 12, EOS], [21, EOS]], True, False)


def test_a_response_ending_in_eos_gets_no_second_one() -> None:
    assert cut([1], [[11, EOS], [21]], "when_needed") == ([1], [[11, EOS], [21, EOS]], False, False)


def test_an_unknown_mode_is_an_error_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="prompt_truncation must be one of always, when_needed, got 'sometimes'"):
        cut(P6, [[11]], "sometimes")


def test_the_config_field_is_strict() -> None:
    base = {"source": {"kind": "jsonl", "path": "a"}}
    assert DataConfig(**base).prompt_truncation == "always"
    assert DataConfig(**base, prompt_truncation="when_needed").prompt_truncation == "when_needed"
    with pytest.raises(ValueError, match=r"prompt_truncation\n.*Input should be 'always' or 'when_needed'"):
        DataConfig(**base, prompt_truncation="sometimes")


def test_tokenization_counts_what_was_cut(gpt2_tokenizer) -> None:
    """GPT-2 tokens: " p0 p1 ... p9" is 20 tokens (" p", "0", ...), " a" and " b" one each (+ EOS).

    max_length 24, max_prompt_length 8. Example 0: 20 + 2 = 22 fits; 1: a 30-token chosen answer does not
    fit even after the cut; 2: the two answers are identical once cut to 24 − 8 = 16 tokens.

    always:      prompt cut in 0 and 1, response cut in 1; 2 dropped.
    when_needed: 0 kept whole; 1 as above; 2 dropped.
    """
    tok = gpt2_tokenizer
    prompt = "".join(f" p{i}" for i in range(10))
    assert len(tok(prompt)["input_ids"]) == 20
    long = " x" * 30
    examples = [PreferenceExample(prompt, " a", " b"), PreferenceExample(prompt, long, " b"),
                PreferenceExample(prompt, long + " c", long + " d")]
    counts = {}
    for mode in ("always", "when_needed"):
        pairs, report = tokenize_pairs(examples, tok, max_length=24, max_prompt_length=8, prompt_truncation=mode)
        assert [p.index for p in pairs] == [0, 1] and report.reasons == {IDENTICAL_AFTER_TRUNCATION: 1}
        assert all(p.chosen_length <= 24 and p.rejected_length <= 24 for p in pairs)
        counts[mode] = truncation_counts(report)
        assert f"{PROMPT_CUT} {counts[mode]['prompt_cut']}" in report.summary()
    assert counts["always"] == {"kept": 2, "prompt_cut": 2, "response_cut": 1,
                                "dropped": {IDENTICAL_AFTER_TRUNCATION: 1}}
    assert counts["when_needed"] == {"kept": 2, "prompt_cut": 1, "response_cut": 1,
                                     "dropped": {IDENTICAL_AFTER_TRUNCATION: 1}}


def test_counts_add_up_across_reports() -> None:
    a, b = DropReport(seen=3), DropReport(seen=2)
    a.truncated[PROMPT_CUT] += 2
    b.truncated.update({PROMPT_CUT: 1, RESPONSE_CUT: 1})
    b.drop(PROMPT_TOO_LONG)
    total = DropReport(seen=5).then(a).then(b)
    assert truncation_counts(total) == {"kept": 4, "prompt_cut": 3, "response_cut": 1, "dropped": {PROMPT_TOO_LONG: 1}}
    assert total.summary().startswith("kept 4 of 5 rows (prompt cut 3, response cut 1); dropped 1:")


def test_real_hh_when_needed_keeps_more_whole_prompts(real_hh_path, gpt2_tokenizer) -> None:
    """At 512/256 tokens, 277 of the 2,303 real HH prompts are cut always, 74 when needed: 203 pairs keep
    context that fits (docs/recipe.md, data.prompt_truncation)."""
    from alignkit.data import HHRLHFSource, load_examples

    examples, _ = load_examples(HHRLHFSource(path=str(real_hh_path)))
    found = {}
    for mode in ("always", "when_needed"):
        _, report = tokenize_pairs(examples, gpt2_tokenizer, prompt_truncation=mode)
        found[mode] = truncation_counts(report)
    assert found["always"]["prompt_cut"] == 277 and found["when_needed"]["prompt_cut"] == 74
    assert found["always"]["response_cut"] == found["when_needed"]["response_cut"] == 14
