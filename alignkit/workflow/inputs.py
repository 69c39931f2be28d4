"""What a run reads that can be checked before anything is written: data files and local model folders.

A run that replaces a folder (``--overwrite``) checks these first, so a misspelt data path fails before the
finished run is deleted, not after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.models.smollm2 import MODEL_ALIASES

__all__ = ["missing_inputs"]

_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


def _looks_local(name: str) -> bool:
    """Whether a model name is a path on this machine rather than a Hub id or a built-in alias."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def _source_problem(where: str, source: Any) -> str | None:
    path = getattr(source, "path", None)
    kind = str(getattr(source, "kind", ""))
    if not isinstance(path, str):
        return None
    local = "jsonl" in kind or path.endswith(_DATA_SUFFIXES) or path.startswith(("/", "./", "../", "~"))
    if local and not Path(path).expanduser().exists():
        return f"{where}.path: file not found: {path}"
    return None


def _model_problem(where: str, name: str | None) -> str | None:
    if not name or name.lower() in MODEL_ALIASES or not _looks_local(name):
        return None
    if not Path(name).expanduser().is_dir():
        return f"{where}: no such model folder: {name}"
    return None


def missing_inputs(recipe: Any) -> list[str]:
    """``field: problem`` for each data file or local model folder the recipe names that does not exist.

    Reads ``data.source`` / ``data.test_source`` (offline) or ``prompts`` (online), ``model.name_or_path``
    (unless ``model.from_config`` builds the model), ``model.tokenizer`` and ``reference.name_or_path``.
    Hub ids are not checked: only loading them can tell.
    """
    data = getattr(recipe, "data", None)
    sources = {"data.source": getattr(data, "source", None), "data.test_source": getattr(data, "test_source", None),
               "prompts": getattr(recipe, "prompts", None)}
    model = recipe.model
    models = {"model.name_or_path": None if model.from_config else model.name_or_path,
              "model.tokenizer": model.tokenizer,
              "reference.name_or_path": getattr(getattr(recipe, "reference", None), "name_or_path", None)}
    found = [_source_problem(where, source) for where, source in sources.items() if source is not None]
    found += [_model_problem(where, name) for where, name in models.items()]
    return [problem for problem in found if problem is not None]
