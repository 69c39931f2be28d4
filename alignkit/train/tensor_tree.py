"""Nested training state (optimizer, scheduler, RNG) as JSON plus safetensors: saved and read without pickle.

``torch.save`` / ``torch.load`` pickle, and unpickling a file runs whatever code the file names: anyone who
can put a file into a run folder could run code on ``--resume``. Here a nested structure of dicts, lists,
tuples, numbers, strings, numpy arrays and tensors becomes a JSON skeleton in which every tensor is replaced
by a key into one safetensors file; reading it back builds only those types.

Encoding of what JSON cannot say by itself::

    tensor              {"$tensor": "t0"}                 (the tensor is "t0" in the safetensors file)
    tuple               {"$tuple": [...]}
    numpy array         {"$ndarray": [...], "dtype": "uint32"}
    dict, other keys    {"$items": [[key, value], ...]}    (int keys: an optimizer's per-parameter state)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.jsonio import read_json, to_json

__all__ = ["load_tree", "save_tree", "tree_from_json", "tree_to_json"]

_MARKERS = ("$tensor", "$tuple", "$ndarray", "$items")


def tree_to_json(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``tree`` into a JSON-serialisable skeleton and its tensors (contiguous, on CPU).

    Raises:
        TypeError: a value of another type (it would need pickling).
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().to("cpu").contiguous()
            return {"$tensor": key}
        if isinstance(value, np.ndarray):
            return {"$ndarray": value.tolist(), "dtype": str(value.dtype)}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"$tuple": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {"$items": [[encode(k), encode(v)] for k, v in value.items()]}
        raise TypeError(f"cannot save a {type(value).__name__} without pickling it")

    return encode(tree), tensors


def tree_from_json(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild what :func:`tree_to_json` split."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$tuple" in value:
            return tuple(decode(v) for v in value["$tuple"])
        if "$ndarray" in value:
            return np.asarray(value["$ndarray"], dtype=np.dtype(value["dtype"]))
        if "$items" in value:
            return {_hashable(decode(k)): decode(v) for k, v in value["$items"]}
        return {k: decode(v) for k, v in value.items()}

    return decode(skeleton)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def save_tree(tree: Any, json_path: Path, tensors_path: Path) -> None:
    """Write ``tree`` as ``json_path`` (the skeleton) and ``tensors_path`` (safetensors)."""
    skeleton, tensors = tree_to_json(tree)
    save_file(tensors, str(tensors_path))
    json_path.write_text(to_json(skeleton, indent=None))


def load_tree(json_path: Path, tensors_path: Path) -> Any:
    """Read what :func:`save_tree` wrote (no code runs: JSON and safetensors only)."""
    skeleton = read_json(json_path, expect=object, what="a saved tree's skeleton")
    return tree_from_json(skeleton, load_file(str(tensors_path)))
