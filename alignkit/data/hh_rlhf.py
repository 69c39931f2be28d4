"""Anthropic HH-RLHF: split two full dialogues into a shared prompt and two responses.

A row is ``{"chosen": dialogue, "rejected": dialogue}``, each ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.
The prompt is everything up to and including the last ``"\\n\\nAssistant:"``; the responses are what
follows it.

Whitespace convention: the prompt ends exactly with ``"\\n\\nAssistant:"`` (no trailing space) and each
response is ``" " + text.strip()``: exactly one leading space, no trailing whitespace. GPT-2's BPE
attaches a leading space to the following word (``" Hello"`` is one token), so tokenizing the prompt and
the response separately gives the same ids as tokenizing the joined text, and every response starts the
same way whatever stray whitespace the raw data had.
"""

from __future__ import annotations

import re
from pathlib import Path

from alignkit.data.config import HH_SUBSETS, HHRLHFSource
from alignkit.data.jsonl import read_jsonl, require_file
from alignkit.data.types import (
    EMPTY_RESPONSE,
    IDENTICAL,
    MALFORMED,
    MULTI_TURN,
    NO_ASSISTANT,
    PROMPT_MISMATCH,
    DataError,
    DropReport,
    PreferenceExample,
)
from alignkit.hub import hub_unavailable_reason

__all__ = ["ASSISTANT", "HUMAN", "hh_example", "load_hh_rlhf", "split_dialogue"]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """``(prompt, response)`` of an HH dialogue, or None when it has no assistant turn.

    >>> split_dialogue("\\n\\nHuman: Hi\\n\\nAssistant:  Hello! ")
    ('\\n\\nHuman: Hi\\n\\nAssistant:', ' Hello!')
    """
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return dialogue[:cut], " " + dialogue[cut:].strip()


def hh_example(
    row: dict, where: str, report: DropReport, single_turn: bool = False
) -> PreferenceExample | None:
    """Turn one HH row into an example, or count why it is dropped and return None."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        report.drop(MALFORMED, f"{where}: 'chosen' and 'rejected' must be strings")
        return None
    split = split_dialogue(chosen)
    if split is None:
        report.drop(NO_ASSISTANT, where)
        return None
    prompt, chosen_response = split
    # The rejected dialogue must be the same conversation: same prefix, and no further turns after it.
    other = split_dialogue(rejected)
    if other is None or other[0] != prompt:
        report.drop(PROMPT_MISMATCH, where)
        return None
    rejected_response = other[1]
    if not chosen_response.strip() or not rejected_response.strip():
        report.drop(EMPTY_RESPONSE, where)
        return None
    if chosen_response == rejected_response:
        report.drop(IDENTICAL, where)
        return None
    # A filter, not a defect: applied last so the defect counts do not depend on it.
    if single_turn and prompt.count(HUMAN) != 1:
        report.drop(MULTI_TURN)
        return None
    return PreferenceExample(prompt=prompt, chosen=chosen_response, rejected=rejected_response)


def _looks_like_hub_id(path: str) -> bool:
    """"owner/name", not an existing local path and not a file name (a missing .jsonl is a local error)."""
    if Path(path).expanduser().exists() or path.endswith((".jsonl", ".gz", ".json")):
        return False
    return bool(_HUB_ID.match(path))


def _local_files(cfg: HHRLHFSource, field: str = "data.source") -> list[Path]:
    root = require_file(cfg.path, f"{field}.path")
    if root.is_file():
        if cfg.subsets is not None:
            raise DataError(
                f"{field}.subsets applies to a folder or the hub id; "
                f"{cfg.path!r} is a single file: remove 'subsets'"
            )
        return [root]
    files = []
    for subset in cfg.subsets or HH_SUBSETS:
        found = [root / subset / f"{cfg.split}.jsonl{ext}" for ext in (".gz", "")]
        found = [p for p in found if p.exists()]
        if found:
            files.append(found[0])
        elif cfg.subsets is not None:  # asked for explicitly: missing is an error
            raise DataError(
                f"{field}.path: no {subset}/{cfg.split}.jsonl(.gz) under {str(root)!r}"
            )
    if not files:
        raise DataError(
            f"{field}.path: folder {str(root)!r} has no <subset>/{cfg.split}.jsonl(.gz) for any of "
            f"{', '.join(HH_SUBSETS)}"
        )
    return files


def _hub_rows(cfg: HHRLHFSource, field: str = "data.source"):
    """Yield ``(where, row)`` from the Hugging Face Hub copy, or raise a DataError that says what to do."""
    advice = (
        "download the files elsewhere (e.g. harmless-base/test.jsonl.gz from "
        f"github.com/anthropics/hh-rlhf) and set {field}.path to the .jsonl.gz file or to the folder "
        "holding <subset>/<split>.jsonl.gz"
    )
    if (reason := hub_unavailable_reason()) is not None:
        raise DataError(
            f"{field}.path {cfg.path!r} is a hub id (no local file or folder has that "
            f"name) but {reason}: {advice}"
        )
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise DataError(f"reading {cfg.path!r} from the hub needs the 'datasets' package: {advice}") from err
    data_dirs: list[str | None] = list(cfg.subsets) if cfg.subsets else [None]
    for subset in data_dirs:
        try:
            ds = datasets.load_dataset(cfg.path, data_dir=subset, split=cfg.split)
        except Exception as err:  # network, missing split, auth: all end the same way for the user
            raise DataError(f"could not load {cfg.path!r} (data_dir={subset!r}) from the hub: {err}; {advice}") from err
        for i, row in enumerate(ds):
            yield f"{cfg.path}/{subset or ''}[{i}]", row


def load_hh_rlhf(cfg: HHRLHFSource, field: str = "data.source") -> tuple[list[PreferenceExample], DropReport]:
    """Read HH-RLHF from a local file, a folder of subsets, or the hub. See the module docstring.

    ``field`` is the recipe section errors name (``data.source``, ``data.test_source``, ``prompts``).
    """
    report = DropReport()
    examples: list[PreferenceExample] = []
    if _looks_like_hub_id(cfg.path):
        for where, row in _hub_rows(cfg, field):
            report.seen += 1
            ex = hh_example(row, where, report, cfg.single_turn)
            if ex is not None:
                examples.append(ex)
        return examples, report
    for path in _local_files(cfg, field):
        for where, row in read_jsonl(path, report):
            ex = hh_example(row, where, report, cfg.single_turn)
            if ex is not None:
                examples.append(ex)
    return examples, report
