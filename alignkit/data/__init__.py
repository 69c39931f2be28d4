"""Preference data: load (HH-RLHF, jsonl, datasets, generated, K-way, unpaired), split, tokenize and collate.

Flow: ``load_examples(cfg.source)`` -> ``split_train_test`` -> ``tokenize_pairs``, in one call
``prepare_data(cfg, tokenizer)``; the trainer draws each step's examples (``alignkit.train.trainer.step_order``)
and collates them with ``collate_preference`` / ``collate_sft``.
"""

from alignkit.data.collate import IGNORE_INDEX, collate_preference, collate_sft, collate_unpaired
from alignkit.data.config import (
    DataConfig,
    HFDatasetSource,
    HHRLHFSource,
    JsonlSource,
    SentimentSource,
    SourceConfig,
)
from alignkit.data.pipeline import (
    PreparedData,
    heldout_prompts,
    prepare_data,
    prepare_pairs,
)
from alignkit.data.sources import (
    SOURCES,
    PrepareContext,
    SourceSpec,
    load_examples,
    register_prepared_source,
    register_source,
    source_spec,
)
from alignkit.data.split import split_train_test
from alignkit.data.tokenize import tokenize_pairs, tokenize_sft
from alignkit.data.types import DataError, DropReport, PreferenceExample, TokenizedPair
from alignkit.data.unpaired import TokenizedUnpaired, UnpairedExample, label_counts

__all__ = [
    "IGNORE_INDEX",
    "SOURCES",
    "DataConfig",
    "DataError",
    "DropReport",
    "PrepareContext",
    "HFDatasetSource",
    "HHRLHFSource",
    "JsonlSource",
    "PreferenceExample",
    "PreparedData",
    "SentimentSource",
    "SourceConfig",
    "SourceSpec",
    "TokenizedPair",
    "TokenizedUnpaired",
    "UnpairedExample",
    "collate_preference",
    "collate_sft",
    "collate_unpaired",
    "load_examples",
    "heldout_prompts",
    "label_counts",
    "prepare_data",
    "prepare_pairs",
    "register_prepared_source",
    "register_source",
    "source_spec",
    "split_train_test",
    "tokenize_pairs",
    "tokenize_sft",
]

# Kinds prepared their own way register themselves on import.
from alignkit.data import kway as _kway  # noqa: E402,F401
from alignkit.data import sentiment as _sentiment  # noqa: E402,F401
