"""Preference data: load (HH-RLHF, jsonl, datasets), split, tokenize, batch and collate.

Flow: ``load_examples(cfg.source)`` -> ``split_train_test`` -> ``tokenize_pairs`` -> ``iterate_batches``
-> ``collate_preference``; ``prepare_data(cfg, tokenizer)`` does the first three in one call.
"""

from alignkit.data.batching import PreferenceDataset, iterate_batches
from alignkit.data.collate import IGNORE_INDEX, collate_preference, collate_sft
from alignkit.data.config import (
    DataConfig,
    HFDatasetSource,
    HHRLHFSource,
    JsonlSource,
    SentimentSource,
    SourceConfig,
)
from alignkit.data.pipeline import PreparedData, prepare_data
from alignkit.data.sources import SOURCES, load_examples, register_source
from alignkit.data.split import split_train_test
from alignkit.data.tokenize import tokenize_pairs, tokenize_sft
from alignkit.data.types import DataError, DropReport, PreferenceExample, TokenizedPair

__all__ = [
    "IGNORE_INDEX",
    "SOURCES",
    "DataConfig",
    "DataError",
    "DropReport",
    "HFDatasetSource",
    "HHRLHFSource",
    "JsonlSource",
    "PreferenceDataset",
    "PreferenceExample",
    "PreparedData",
    "SentimentSource",
    "SourceConfig",
    "TokenizedPair",
    "collate_preference",
    "collate_sft",
    "iterate_batches",
    "load_examples",
    "prepare_data",
    "register_source",
    "split_train_test",
    "tokenize_pairs",
    "tokenize_sft",
]
