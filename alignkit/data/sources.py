"""Data sources: a registry from ``data.source.kind`` to a loader returning examples and a drop report.

A loader is ``fn(source_cfg, **context) -> (list[PreferenceExample], DropReport)``. Built-ins:
``hh_rlhf``, ``jsonl``, ``hf_dataset``; they ignore ``context``. Another module adds one with
``@register_source("name")``; sources that generate their pairs (from a model and a reward) read what they
need from ``context`` (e.g. ``model=``, ``tokenizer=``), which the caller passes to :func:`load_examples`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.data.config import HFDatasetSource, HHRLHFSource, JsonlSource
from alignkit.data.hh_rlhf import load_hh_rlhf
from alignkit.data.jsonl import read_jsonl, require_file
from alignkit.data.rows import row_to_example
from alignkit.data.types import DataError, DropReport, PreferenceExample
from alignkit.registry import Registry

__all__ = ["SOURCES", "SourceLoader", "load_examples", "register_source"]

SourceLoader = Callable[..., tuple[list[PreferenceExample], DropReport]]
SOURCES: Registry[SourceLoader] = Registry("data source")


def register_source(kind: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: register ``fn`` as the loader of sources whose config has ``kind == kind``."""

    def wrap(fn: SourceLoader) -> SourceLoader:
        return SOURCES.add(kind, fn)

    return wrap


def load_examples(source_cfg: Any, **context: Any) -> tuple[list[PreferenceExample], DropReport]:
    """Load every example of a source config (anything with a ``kind`` attribute that is registered).

    Args:
        source_cfg: e.g. ``DataConfig.source``.
        **context: objects a generating source needs (``model=``, ``tokenizer=``); passed through.

    Returns:
        The examples in source order, and a report of the rows read and the rows dropped (with why).
    """
    return SOURCES.get(source_cfg.kind)(source_cfg, **context)


@register_source("hh_rlhf")
def _load_hh(cfg: HHRLHFSource, **_: Any) -> tuple[list[PreferenceExample], DropReport]:
    return load_hh_rlhf(cfg)


@register_source("jsonl")
def load_jsonl(cfg: JsonlSource, **_: Any) -> tuple[list[PreferenceExample], DropReport]:
    """Rows of a .jsonl/.jsonl.gz file; malformed lines are counted with their ``file:line``."""
    path = require_file(cfg.path, "data.source.path")
    if path.is_dir():
        raise DataError(f"data.source.path: {str(path)!r} is a folder; the jsonl source reads one file")
    report = DropReport()
    examples = []
    for where, row in read_jsonl(path, report):
        ex = row_to_example(row, cfg, where, report)
        if ex is not None:
            examples.append(ex)
    return examples, report


def _open_dataset(cfg: HFDatasetSource):
    import datasets

    local = Path(cfg.name).expanduser()
    saved = local.is_dir() and any(
        (local / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
    )
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise DataError(
                        f"data.source.split {cfg.split!r} not in {str(local)!r}; splits: {', '.join(ds)}"
                    )
                ds = ds[cfg.split]
            return ds
        return datasets.load_dataset(cfg.name, cfg.config_name, data_dir=cfg.data_dir, split=cfg.split)
    except DataError:
        raise
    except Exception as err:  # offline hub, missing split, bad script: one clear message
        raise DataError(
            f"data.source.name: could not load dataset {cfg.name!r} (split {cfg.split!r}): {err}. Offline, "
            "point it at a folder saved with save_to_disk, or use a jsonl source."
        ) from err


@register_source("hf_dataset")
def load_hf_dataset(cfg: HFDatasetSource, **_: Any) -> tuple[list[PreferenceExample], DropReport]:
    """Rows of a ``datasets`` dataset (hub name or saved folder); bad rows are counted as ``row N``."""
    ds = _open_dataset(cfg)
    missing = [c for c in (cfg.chosen_field, cfg.rejected_field) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"data.source: column(s) {', '.join(map(repr, missing))} not in dataset {cfg.name!r}; "
            f"columns: {', '.join(ds.column_names)}"
        )
    report = DropReport()
    examples = []
    for i, row in enumerate(ds):
        report.seen += 1
        ex = row_to_example(row, cfg, f"row {i}", report)
        if ex is not None:
            examples.append(ex)
    return examples, report
