"""HH-RLHF parsing: hand-written dialogues, the shipped fixture file and (optional) the real test split."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from alignkit.data import DataError, HHRLHFSource, load_examples
from alignkit.data.hh_rlhf import ASSISTANT, split_dialogue
from alignkit.data.types import EMPTY_RESPONSE, IDENTICAL, MULTI_TURN, PROMPT_MISMATCH

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

MULTI = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:"
SINGLE = "\n\nHuman: What is 2+2?\n\nAssistant:"


def _row(prompt: str, chosen: str, rejected: str, rejected_prompt: str | None = None) -> dict:
    return {"chosen": prompt + chosen, "rejected": (rejected_prompt or prompt) + rejected}


def _write(path: Path, rows: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_split_dialogue_cuts_at_last_assistant_and_normalizes_space() -> None:
    assert split_dialogue(MULTI + "  Why did the chicken cross the road? \n") == (
        MULTI, " Why did the chicken cross the road?"
    )
    assert split_dialogue("\n\nHuman: no answer yet") is None


def test_hand_written_dialogues(tmp_path: Path) -> None:
    rows = [
        _row(MULTI, " A pun.", " No."),                                  # multi-turn, kept
        _row(SINGLE, " 4", " 5"),                                        # single turn, kept
        _row(SINGLE, " 4", " 5", rejected_prompt=SINGLE.replace("2+2", "3+3")),  # prompts differ
        _row(SINGLE, "   ", " 5"),                                       # empty chosen
        _row(SINGLE, " same", "same "),                                  # identical after normalizing
        _row(SINGLE, " 4", " 5\n\nHuman: and 3+3?\n\nAssistant: 6"),      # rejected adds turns
    ]
    path = _write(tmp_path / "hh.jsonl", rows)
    examples, report = load_examples(HHRLHFSource(path=str(path)))
    assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [(MULTI, " A pun.", " No."), (SINGLE, " 4", " 5")]
    assert report.seen == 6 and report.kept == 2
    assert report.reasons == {PROMPT_MISMATCH: 2, EMPTY_RESPONSE: 1, IDENTICAL: 1}
    assert report.locations[PROMPT_MISMATCH] == ["hh.jsonl:3", "hh.jsonl:6"]
    assert "hh.jsonl:4" in report.summary()

    single, report = load_examples(HHRLHFSource(path=str(path), single_turn=True))
    assert [e.prompt for e in single] == [SINGLE]
    assert report.reasons[MULTI_TURN] == 1


def test_folder_layout_reads_each_subset(tmp_path: Path) -> None:
    (tmp_path / "harmless-base").mkdir()
    (tmp_path / "helpful-base").mkdir()
    _write(tmp_path / "harmless-base" / "test.jsonl.gz", [_row(SINGLE, " 4", " 5")])
    _write(tmp_path / "helpful-base" / "test.jsonl", [_row(MULTI, " a", " b"), _row(SINGLE, " x", " y")])
    both, _ = load_examples(HHRLHFSource(path=str(tmp_path), split="test"))
    assert len(both) == 3
    one, _ = load_examples(HHRLHFSource(path=str(tmp_path), split="test", subsets=["helpful-base"]))
    assert [e.chosen for e in one] == [" a", " x"]
    with pytest.raises(DataError, match="helpful-online/test.jsonl"):
        load_examples(HHRLHFSource(path=str(tmp_path), split="test", subsets=["helpful-online"]))
    with pytest.raises(DataError, match="train"):
        load_examples(HHRLHFSource(path=str(tmp_path), split="train"))


def test_missing_file_and_offline_hub_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "hh.jsonl.gz"
    with pytest.raises(DataError, match=r"data\.source\.path.*not found.*hh\.jsonl\.gz"):
        load_examples(HHRLHFSource(path=str(missing)))
    # conftest sets HF_HUB_OFFLINE=1: a hub id must fail at once, telling how to use a local file.
    with pytest.raises(DataError, match=r"HF_HUB_OFFLINE.*data\.source\.path"):
        load_examples(HHRLHFSource(path="Anthropic/hh-rlhf"))


def _check_parsed(path: Path, kept: int) -> list:
    """Load ``path`` both ways and check the parsing conventions on every example; returns the examples."""
    examples, _ = load_examples(HHRLHFSource(path=str(path)))
    assert len(examples) == kept
    for e in examples:
        assert e.prompt.endswith("\n\nAssistant:") and e.prompt.startswith("\n\nHuman:")
        for r in (e.chosen, e.rejected):
            assert r.startswith(" ") and not r.startswith("  ") and r == r.rstrip()
            assert "\n\nAssistant:" not in r
        assert e.chosen != e.rejected

    single, report = load_examples(HHRLHFSource(path=str(path), single_turn=True))
    assert all(e.prompt.count("\n\nHuman:") == 1 for e in single)
    assert len(single) + report.reasons[MULTI_TURN] == kept
    assert len(single) == sum(e.prompt.count("\n\nHuman:") == 1 for e in examples)
    return examples


def test_shipped_fixture_file(hh_path: Path) -> None:
    """The project's own file in the real format (tests/fixtures/make_hh_fixture.py says what it holds)."""
    _, report = load_examples(HHRLHFSource(path=str(hh_path)))
    assert report.seen == 72
    assert report.reasons == {PROMPT_MISMATCH: 2, EMPTY_RESPONSE: 2, IDENTICAL: 1}
    assert all(loc.startswith("harmless-base-test.jsonl.gz:") for locs in report.locations.values() for loc in locs)
    examples = _check_parsed(hh_path, kept=67)
    turns = Counter(e.prompt.count("\n\nHuman:") for e in examples)
    assert turns[1] == 29 and sum(turns.values()) - turns[1] == 38 and max(turns) == 5
    # The raw whitespace the loader normalizes is really in the file: "Assistant:  x", "x \n".
    rows = [json.loads(line) for line in gzip.decompress(hh_path.read_bytes()).decode("utf-8").splitlines()]
    tails = [d[d.rfind(ASSISTANT) + len(ASSISTANT):] for r in rows for d in (r["chosen"], r["rejected"])]
    assert any(t.startswith("  ") for t in tails) and any(t.strip() and t != t.rstrip() for t in tails)


def test_shipped_fixture_matches_its_generator(hh_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_hh_fixture", FIXTURES / "make_hh_fixture.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    assert make.FIXTURE_PATH == hh_path
    assert gzip.decompress(hh_path.read_bytes()).decode("utf-8") == make.jsonl_text(), (
        "tests/fixtures/hh-rlhf is stale: run `python tests/fixtures/make_hh_fixture.py`"
    )


def test_real_harmless_base_test_file(real_hh_path: Path) -> None:
    _, report = load_examples(HHRLHFSource(path=str(real_hh_path)))
    assert report.seen == 2312
    # 5 pairs whose rejected dialogue diverges before the last assistant turn, 4 with an empty response.
    assert report.reasons == {PROMPT_MISMATCH: 5, EMPTY_RESPONSE: 4}
    _check_parsed(real_hh_path, kept=2303)
