"""K-way comparisons for K-way reward models (Ziegler et al. 2019): one prompt, K responses, the best one.

A row of the jsonl file is ``{"prompt": ..., "responses": [r_1, ..., r_K], "best": i}`` or, instead of
``best``, ``"scores": [s_1, ..., s_K]`` (the best is the arg-max). Every row of a file has the same K.
Prompts and responses are plain text; tokenization follows :mod:`alignkit.data.tokenize` (separate
tokenization, EOS appended, long prompts keep their end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignkit.data.config import DataConfig, KWayJsonlSource
from alignkit.data.jsonl import read_jsonl, require_file
from alignkit.data.sources import PrepareContext, register_prepared_source
from alignkit.data.split import split_train_test
from alignkit.data.tokenize import _adds_bos, _batch_ids
from alignkit.data.truncation import PromptTruncation, count_cuts, truncate_pair
from alignkit.data.types import (
    EMPTY_RESPONSE,
    MALFORMED,
    PROMPT_TOO_LONG,
    DataError,
    DropReport,
    PreparedData,
)
from alignkit.lazy import lazy_module
from alignkit.losses.batch_kinds import KWAY
from alignkit.models.padding import labelled_batch

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["KWayExample", "KWayJsonlSource", "TokenizedKWay", "collate_kway", "prepare_kway_data"]


@dataclass
class KWayExample:
    prompt: str
    responses: list[str]
    best: int
    weight: float = 1.0


@dataclass
class TokenizedKWay:
    prompt_ids: list[int]
    response_ids: list[list[int]]
    best: int
    weight: float
    index: int


def load_kway(cfg: KWayJsonlSource) -> tuple[list[KWayExample], DropReport]:
    path = require_file(cfg.path, "data.source.path")
    report = DropReport()
    examples: list[KWayExample] = []
    k = None
    for where, row in read_jsonl(path, report):
        prompt, responses = row.get(cfg.prompt_field), row.get(cfg.responses_field)
        best = row.get(cfg.best_field)
        if best is None and isinstance(row.get(cfg.scores_field), list):
            scores = row[cfg.scores_field]
            best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        if not isinstance(prompt, str) or not isinstance(responses, list) or not isinstance(best, int) \
                or not all(isinstance(r, str) for r in responses) or not 0 <= best < len(responses):
            report.drop(MALFORMED, f"{where}: needs {cfg.prompt_field} (text), {cfg.responses_field} (list of "
                                   f"texts) and {cfg.best_field} (an index) or {cfg.scores_field}")
            continue
        k = k if k is not None else len(responses)
        if len(responses) != k or k < 2:
            raise DataError(f"{where}: {len(responses)} responses, but K must be the same (>= 2) on every row "
                            f"(first row has {k})")
        examples.append(KWayExample(prompt, responses, best))
    return examples, report


def tokenize_kway(
    examples: Sequence[KWayExample], tokenizer, max_length: int, max_prompt_length: int, start_index: int = 0,
    prompt_truncation: PromptTruncation = "always",
) -> tuple[list[TokenizedKWay], DropReport]:
    report = DropReport(seen=len(examples))
    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    prompts = _batch_ids(tokenizer, [e.prompt for e in examples])
    responses = _batch_ids(tokenizer, [r for e in examples for r in e.responses])
    out: list[TokenizedKWay] = []
    offset = 0
    for i, (example, prompt_ids) in enumerate(zip(examples, prompts, strict=True)):
        ids = responses[offset:offset + len(example.responses)]
        offset += len(example.responses)
        if any(not r.strip() for r in example.responses):
            report.drop(EMPTY_RESPONSE, f"example {i}")
            continue
        cut = truncate_pair(prompt_ids, ids, max_length, max_prompt_length, tokenizer.eos_token_id, bos,
                            prompt_truncation)
        if cut is None:
            report.drop(PROMPT_TOO_LONG, f"example {i}")
            continue
        count_cuts(report, cut)
        out.append(TokenizedKWay(cut.prompt_ids, cut.responses, example.best, example.weight, start_index + i))
    return out, report


@KWAY.collates
def collate_kway(
    items: Sequence[TokenizedKWay], pad_token_id: int, pad_to_multiple_of: int | None = 8
) -> dict[str, torch.Tensor | int]:
    """B examples of K candidates as B*K rows, example-major (row b*K + j is candidate j of example b).

    Returns:
        input_ids, attention_mask, labels: (B*K, T); best_index: (B,) long; num_candidates: K;
        weights: (B,) float; index: (B,) long.
    """
    k = len(items[0].response_ids)
    rows = [(item.prompt_ids, response) for item in items for response in item.response_ids]
    return {
        **labelled_batch(rows, pad_token_id, pad_to_multiple_of=pad_to_multiple_of),
        "best_index": torch.tensor([item.best for item in items], dtype=torch.long),
        "num_candidates": k,
        "weights": torch.tensor([item.weight for item in items], dtype=torch.float32),
        "index": torch.tensor([item.index for item in items], dtype=torch.long),
    }


@register_prepared_source("kway_jsonl", feeds=(KWAY,))
def prepare_kway_data(cfg: DataConfig, tokenizer: Any, context: PrepareContext | None = None) -> PreparedData:
    """Load, split and tokenize a K-way source (the K-way counterpart of :func:`prepare_pairs`)."""
    src = cfg.source
    if not isinstance(src, KWayJsonlSource):
        raise DataError(f"data.source.kind must be 'kway_jsonl' here, got {src.kind!r}")
    examples, load_report = load_kway(src)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    train_ex, test_ex = split_train_test(examples, cfg.test_size, cfg.seed)
    train, train_report = tokenize_kway(train_ex, tokenizer, cfg.max_length, cfg.max_prompt_length,
                                        prompt_truncation=cfg.prompt_truncation)
    test, test_report = tokenize_kway(test_ex, tokenizer, cfg.max_length, cfg.max_prompt_length,
                                      start_index=len(train_ex), prompt_truncation=cfg.prompt_truncation)
    if not train:
        raise DataError(f"no usable K-way training examples in {src.path}:\n{load_report.summary()}")
    return PreparedData(train, test, train_ex, test_ex, load_report, train_report, test_report)
