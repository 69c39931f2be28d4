"""Row-based sources (jsonl, datasets), conversational rows, and the data config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from alignkit.data import (
    SOURCES,
    DataConfig,
    DataError,
    HFDatasetSource,
    HHRLHFSource,
    JsonlSource,
    load_examples,
    register_source,
)
from alignkit.data.config import SentimentSource
from alignkit.data.types import IDENTICAL, MALFORMED, NO_ASSISTANT, DropReport, PreferenceExample

U = {"role": "user", "content": "Name a colour."}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_jsonl_counts_malformed_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"prompt": "Q1", "chosen": " good", "rejected": " bad"}),
            "",                                                   # blank: skipped, not counted
            '{"prompt": "Q2", "chosen": " good"',                 # line 3: invalid JSON
            json.dumps(["not", "an", "object"]),                  # line 4
            json.dumps({"prompt": "Q5", "chosen": " good"}),      # line 5: no rejected
            json.dumps({"prompt": "Q6", "chosen": 3, "rejected": " x"}),  # line 6: wrong type
            json.dumps({"prompt": "Q7", "chosen": " same", "rejected": " same"}),
            json.dumps({"prompt": "Q8", "chosen": " a", "rejected": " b"}),
        ]) + "\n",
        encoding="utf-8",
    )
    examples, report = load_examples(JsonlSource(path=str(path)))
    assert [e.prompt for e in examples] == ["Q1", "Q8"]
    assert examples[0] == PreferenceExample("Q1", " good", " bad", 1.0)  # text kept exactly as written
    assert report.seen == 7 and report.reasons == {MALFORMED: 4, IDENTICAL: 1}
    where = report.locations[MALFORMED]
    assert [w.split(":")[1] for w in where] == ["3", "4", "5", "6"]
    assert where[0].startswith("pairs.jsonl:3: invalid JSON")
    assert "missing field 'rejected'" in where[2]
    assert "pairs.jsonl:5" in report.summary()


@pytest.mark.parametrize("gz", [False, True])
def test_an_integer_over_4300_digits_or_deep_nesting_drops_its_row_only(tmp_path: Path, gz: bool) -> None:
    import gzip

    good = json.dumps({"prompt": "Q", "chosen": " good", "rejected": " bad"})
    lines = [good, '{"prompt": "Q2", "chosen": " a", "rejected": " b", "w": 1' + "0" * 5000 + "}",
             '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", good.replace("Q", "Q4")]
    text = "\n".join(lines) + "\n"
    path = tmp_path / ("pairs.jsonl.gz" if gz else "pairs.jsonl")
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    examples, report = load_examples(JsonlSource(path=str(path)))
    assert [e.prompt for e in examples] == ["Q", "Q4"]
    assert report.reasons == {MALFORMED: 2}
    assert report.locations[MALFORMED] == [f"{path.name}:2: an integer too long to read (over 4300 digits)",
                                           f"{path.name}:3: JSON nested too deeply"]


def test_a_nan_or_infinity_in_a_row_drops_that_row_by_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "Q", "chosen": " good", "rejected": " bad"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([good, '{"prompt": "Q2", "chosen": " a", "rejected": " b", "w": NaN}',
                               '{"prompt": "Q3", "chosen": " a", "rejected": " b", "w": -Infinity}',
                               good.replace("Q", "Q4")]) + "\n")
    examples, report = load_examples(JsonlSource(path=str(path)))
    assert [e.prompt for e in examples] == ["Q", "Q4"]
    assert report.locations[MALFORMED] == [f"{path.name}:2: NaN is not a JSON number",
                                           f"{path.name}:3: -Infinity is not a JSON number"]


def test_jsonl_custom_columns_and_weights(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    rows = [
        {"q": "A", "good": " y", "bad": " n", "w": 0.25},
        {"q": "B", "good": " y", "bad": " n", "w": "heavy"},
        {"q": "C", "good": " y", "bad": " n"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = JsonlSource(path=str(path), prompt_field="q", chosen_field="good", rejected_field="bad", weight_field="w")
    examples, report = load_examples(cfg)
    assert [(e.prompt, e.weight) for e in examples] == [("A", 0.25)]
    assert report.reasons[MALFORMED] == 2 and "'w' must be a finite number" in report.locations[MALFORMED][0]


def test_jsonl_conversational_rows(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    rows = [
        # implicit prompt: full conversations sharing the user turn
        {"chosen": [U, _a("Blue.")], "rejected": [U, _a("No.")]},
        # explicit prompt; chosen repeats it, rejected does not
        {"prompt": [U], "chosen": [U, _a("Red.")], "rejected": [_a("Meh.")]},
        # text prompt with message responses: the prompt becomes one user message
        {"prompt": "Name a colour.", "chosen": [_a("Green.")], "rejected": [_a("Cat.")]},
        # no assistant turn after the shared prefix
        {"chosen": [U, U], "rejected": [U, {"role": "user", "content": "?"}]},
        {"chosen": [U, _a("x")], "rejected": [U, _a("x")]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, report = load_examples(JsonlSource(path=str(path)))
    assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
        ([U], [_a("Blue.")], [_a("No.")]),
        ([U], [_a("Red.")], [_a("Meh.")]),
        ([U], [_a("Green.")], [_a("Cat.")]),
    ]
    assert all(e.conversational for e in examples)
    assert report.reasons == {NO_ASSISTANT: 1, IDENTICAL: 1}


def test_jsonl_missing_file_names_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.source\.path.*missing\.jsonl"):
        load_examples(JsonlSource(path=str(tmp_path / "missing.jsonl")))


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"p": ["A", "B"], "c": [" y", ""], "r": [" n", " n"]}),
        "test": datasets.Dataset.from_dict({"p": ["T"], "c": [" y"], "r": [" n"]}),
    })
    ds.save_to_disk(str(tmp_path / "saved"))
    cfg = HFDatasetSource(name=str(tmp_path / "saved"), prompt_field="p", chosen_field="c", rejected_field="r")
    examples, report = load_examples(cfg)
    assert [e.prompt for e in examples] == ["A"] and report.seen == 2 and report.dropped == 1
    test, _ = load_examples(cfg.model_copy(update={"split": "test"}))
    assert [e.prompt for e in test] == ["T"]
    with pytest.raises(DataError, match="split 'dev'"):
        load_examples(cfg.model_copy(update={"split": "dev"}))
    with pytest.raises(DataError, match="column"):
        load_examples(HFDatasetSource(name=str(tmp_path / "saved")))


def test_hf_dataset_unreachable_is_a_data_error() -> None:
    with pytest.raises(DataError, match="could not load dataset"):
        load_examples(HFDatasetSource(name="someone/surely-not-cached-dataset"))


def test_registry_extends_sources() -> None:
    class Fake:
        kind = "fake_for_test"

    @register_source("fake_for_test")
    def fake(cfg, *, model=None, **_):
        return [PreferenceExample("p", f" {model}", " b")], DropReport(seen=1)

    try:
        examples, report = load_examples(Fake(), model="context reaches the loader")
        assert examples[0].chosen == " context reaches the loader" and report.kept == 1
        with pytest.raises(KeyError, match="already registered"):
            register_source("fake_for_test")(fake)
    finally:
        SOURCES.remove("fake_for_test")


def test_data_config_validation() -> None:
    cfg = DataConfig(source={"kind": "hh_rlhf", "path": "x.jsonl.gz", "split": "test"})
    assert cfg.source.kind == "hh_rlhf" and cfg.max_length == 512 and cfg.max_prompt_length == 256
    assert isinstance(DataConfig(source={"kind": "jsonl", "path": "a.jsonl"}).source, JsonlSource)
    assert DataConfig(source={"kind": "jsonl", "path": "a"}, test_size=5).test_size == 5
    assert DataConfig(source={"kind": "sentiment", "num_prompts": 64}).source.completions_per_prompt == 4
    bad = [
        {"source": {"kind": "jsonl", "path": "a", "prompt_fieldd": "q"}},      # typo: extra field
        {"source": {"kind": "csv", "path": "a"}},                              # unknown kind
        {"source": {"kind": "hh_rlhf", "subsets": ["harmless"]}},             # unknown subset
        {"source": {"kind": "jsonl", "path": "a"}, "max_prompt_length": 512},  # no room for responses
        {"source": {"kind": "jsonl", "path": "a"}, "test_size": 1.5},
        {"source": {"kind": "jsonl", "path": "a"}, "test_size": -1},
        {"source": {"kind": "jsonl", "path": "a"}, "shuffle": True},
        {"source": {"kind": "sentiment", "completions_per_prompt": 1}},
    ]
    for kwargs in bad:
        with pytest.raises(ValidationError):
            DataConfig(**kwargs)
    # every field is documented (the recipe docs read these descriptions)
    for model in (DataConfig, JsonlSource, HFDatasetSource, HHRLHFSource, SentimentSource):
        for name, field in model.model_fields.items():
            assert name == "kind" or field.description, f"{model.__name__}.{name} has no description"


def test_drop_report_merge_then_and_summary() -> None:
    load = DropReport(seen=10)
    load.drop(MALFORMED, "a.jsonl:3")
    other = DropReport(seen=5)
    other.drop(IDENTICAL)
    tok = DropReport(seen=13)
    tok.drop("too long", "example 4")
    total = DropReport().merge(load).merge(other).then(tok)
    assert (total.seen, total.dropped, total.kept) == (15, 3, 12)
    assert total.summary().splitlines() == [
        "kept 12 of 15 rows; dropped 3:",
        "  1  malformed row (a.jsonl:3)",
        "  1  identical chosen and rejected",
        "  1  too long (example 4)",
    ]
    assert DropReport(seen=2).summary() == "kept 2 of 2 rows"
