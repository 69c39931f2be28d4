"""Unpaired data from its sources: the ``unpaired_jsonl`` and ``unpaired_hf_dataset`` kinds, and any paired
source split into unpaired examples (``data.unpaired``), each item given its mismatched prompt.

Splitting a pair gives a desirable example (prompt, chosen) and an undesirable one (prompt, rejected); the
split happens after the train/test split, so both halves of a pair stay on the same side.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from alignkit.data.config import DataConfig, UnpairedHFDatasetSource, UnpairedJsonlSource
from alignkit.data.jsonl import read_jsonl, require_file
from alignkit.data.sources import PrepareContext, open_dataset, register_prepared_source
from alignkit.data.split import split_train_test
from alignkit.data.tokenize import tokenize_sft
from alignkit.data.types import DataError, DropReport, PreferenceExample, PreparedData, TokenizedPair
from alignkit.data.unpaired import TokenizedUnpaired, UnpairedExample, row_to_unpaired
from alignkit.losses.batch_kinds import UNPAIRED

__all__ = ["assign_mismatched_prompts", "load_unpaired", "split_pair_items", "split_pairs", "tokenize_unpaired"]

UnpairedSource = UnpairedJsonlSource | UnpairedHFDatasetSource


def load_unpaired(cfg: UnpairedSource, field: str = "data.source") -> tuple[list[UnpairedExample], DropReport]:
    """Every usable example of an unpaired source, and a report of the rows read and dropped (with where)."""
    report = DropReport()
    examples: list[UnpairedExample] = []
    if isinstance(cfg, UnpairedJsonlSource):
        path = require_file(cfg.path, f"{field}.path")
        if path.is_dir():
            raise DataError(f"{field}.path: {str(path)!r} is a folder; the unpaired_jsonl source reads one file")
        rows: Any = read_jsonl(path, report)
    else:
        ds = open_dataset(cfg.name, cfg.split, config_name=cfg.config_name, data_dir=cfg.data_dir, field=field)
        if cfg.label_field not in ds.column_names:
            raise DataError(f"{field}.label_field: column {cfg.label_field!r} not in dataset {cfg.name!r}; "
                            f"columns: {', '.join(ds.column_names)}")
        rows = _counted_rows(ds, report)
    for where, row in rows:
        example = row_to_unpaired(row, cfg, where, report)
        if example is not None:
            examples.append(example)
    return examples, report


def _counted_rows(ds: Any, report: DropReport) -> Any:
    for i, row in enumerate(ds):
        report.seen += 1
        yield f"row {i}", row


def tokenize_unpaired(
    examples: Sequence[UnpairedExample], tokenizer: Any, cfg: DataConfig, start_index: int = 0
) -> tuple[list[TokenizedUnpaired], DropReport]:
    """Tokenize prompt + completion by the rules of :func:`~alignkit.data.tokenize.tokenize_sft` (the
    completion in the place of the chosen response); ``index = start_index + position``."""
    as_pairs = [PreferenceExample(e.prompt, e.completion, e.completion, e.weight) for e in examples]
    tokenized, report = tokenize_sft(as_pairs, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template,
                                     start_index=start_index, prompt_truncation=cfg.prompt_truncation)
    items = [TokenizedUnpaired(p.prompt_ids, p.chosen_ids, examples[p.index - start_index].label, p.weight, p.index)
             for p in tokenized]
    return items, report


def assign_mismatched_prompts(items: list[TokenizedUnpaired], max_length: int, seed: int) -> list[TokenizedUnpaired]:
    """Give each item the prompt of another item with a different prompt (in place; returned for chaining).

    The partners follow a seeded shuffle: each item takes the prompt of the next item in that order whose
    prompt differs (its own when every prompt is the same). The partner's prompt keeps its end so that it
    and the completion fit ``max_length``.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n = len(order)
    for k, i in enumerate(order):
        item = items[i]
        partner = next((items[order[(k + step) % n]] for step in range(1, n)
                        if items[order[(k + step) % n]].prompt_ids != item.prompt_ids), item)
        room = max(max_length - len(item.completion_ids), 1)
        item.mismatched_prompt_ids = partner.prompt_ids[-room:]
    return items


def split_pair_items(pairs: Sequence[TokenizedPair]) -> list[TokenizedUnpaired]:
    """Pair ``i`` -> items ``2i`` (prompt, chosen, desirable) and ``2i + 1`` (prompt, rejected, undesirable)."""
    out = []
    for p in pairs:
        out.append(TokenizedUnpaired(p.prompt_ids, p.chosen_ids, True, p.weight, 2 * p.index))
        out.append(TokenizedUnpaired(p.prompt_ids, p.rejected_ids, False, p.weight, 2 * p.index + 1))
    return out


def _split_pair_examples(examples: Sequence[PreferenceExample]) -> list[UnpairedExample]:
    return [UnpairedExample(e.prompt, response, label, e.weight)
            for e in examples for response, label in ((e.chosen, True), (e.rejected, False))]


def split_pairs(data: PreparedData, cfg: DataConfig) -> PreparedData:
    """Prepared pairs as unpaired items: each pair gives a desirable and an undesirable example.

    Indices stay unique over both splits and equal to positions in the new example lists (pair index ``k``
    gives ``2k`` and ``2k + 1``), so cached reference log-probs key them as they key pairs.
    """
    if data.train and not isinstance(data.train[0], TokenizedPair):
        raise DataError(f"data.unpaired: data.source ({cfg.source.kind}) does not give preference pairs to split")
    train = assign_mismatched_prompts(split_pair_items(data.train), cfg.max_length, cfg.seed)
    test = assign_mismatched_prompts(split_pair_items(data.test), cfg.max_length, cfg.seed + 1)
    return PreparedData(train, test, _split_pair_examples(data.train_examples),
                        _split_pair_examples(data.test_examples), data.load_report, data.train_report,
                        data.test_report)


def _prepare_unpaired(cfg: DataConfig, tokenizer: Any, context: PrepareContext) -> PreparedData:  # noqa: ARG001
    """Load, cap, split (or read ``test_source``), tokenize and pair with mismatched prompts."""
    source = cfg.source
    assert isinstance(source, (UnpairedJsonlSource, UnpairedHFDatasetSource))
    examples, load_report = load_unpaired(source)
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        load_report.drop(f"beyond data.max_examples ({cfg.max_examples})", count=len(examples) - cfg.max_examples)
        examples = examples[: cfg.max_examples]
    if cfg.test_source is not None:
        if not isinstance(cfg.test_source, (UnpairedJsonlSource, UnpairedHFDatasetSource)):
            raise DataError(f"data.test_source.kind: {cfg.test_source.kind!r} gives pairs, but data.source gives "
                            "unpaired examples; use an unpaired_jsonl or unpaired_hf_dataset test source")
        train_ex = examples
        test_ex, test_load = load_unpaired(cfg.test_source, "data.test_source")
        load_report.merge(test_load)
    else:
        try:
            train_ex, test_ex = split_train_test(examples, cfg.test_size, cfg.seed)
        except ValueError as err:
            raise DataError(f"data.test_size: {err}") from None
    train, train_report = tokenize_unpaired(train_ex, tokenizer, cfg)
    test, test_report = tokenize_unpaired(test_ex, tokenizer, cfg, start_index=len(train_ex))
    if not train:
        raise DataError(f"no usable unpaired training examples from data.source ({source.kind}):\n"
                        f"loading: {load_report.summary()}\ntokenization: {train_report.summary()}")
    assign_mismatched_prompts(train, cfg.max_length, cfg.seed)
    assign_mismatched_prompts(test, cfg.max_length, cfg.seed + 1)
    return PreparedData(train, test, train_ex, test_ex, load_report, train_report, test_report)


register_prepared_source("unpaired_jsonl", feeds=(UNPAIRED,))(_prepare_unpaired)
register_prepared_source("unpaired_hf_dataset", feeds=(UNPAIRED,))(_prepare_unpaired)
