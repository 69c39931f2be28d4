"""The cache of sampled completions behind reward pairs (:func:`alignkit.data.sentiment.build_reward_pairs`).

Generation is the slow part of making pairs from a reward, so the sampled completions are kept: one JSON
line per prompt after a line of metadata, written atomically, under a key of everything that decides
them: the model's weights (or a given model id), the tokenizer, the prompts, the sampling settings and
the seed. The key is part of existing caches' file names: it must not change for the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.cache import cache_dir as default_cache_dir
from alignkit.cache import writing
from alignkit.jsonio import RunFileError, read_jsonl, to_json
from alignkit.lazy import lazy_module
from alignkit.models.sampling import Sampling

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")

__all__ = [
    "cache_file",
    "model_fingerprint",
    "read_cache",
    "sampling_settings",
    "write_cache",
    "write_jsonl_atomic",
]

log = logging.getLogger(__name__)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()


def model_fingerprint(model: nn.Module, max_elements: int = 65536) -> str:
    """A stable id of a model's weights, cheap enough for a 135M-parameter model (~0.1 s).

    Hashes the class, the config, every tensor's name, shape and dtype, and the raw bytes of up to
    ``max_elements`` evenly strided elements of each tensor: any fine-tuning step changes it.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // max_elements)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    probe = "Hello world. <|im_end|> 123 é"
    return _sha(
        {
            "vocab": len(tokenizer),
            "template": getattr(tokenizer, "chat_template", None) or "",
            "probe": list(tokenizer(probe)["input_ids"]),
            "eos": tokenizer.eos_token_id,
        }
    )


def sampling_settings(sampling: Sampling, *, chat: bool, generation_dtype: torch.dtype | None) -> dict[str, Any]:
    """The settings that decide the sampled completions, as they enter the key and the file's metadata."""
    return {
        "k": sampling.samples_per_prompt,
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        # Each completion draws from its own stream (alignkit.models.decode): the batch size does not matter,
        # the sampler does (caches written by the earlier batch-seeded sampler are not reused).
        "sampler": "row streams",
        "seed": sampling.seed,
        "chat": chat,
        "dtype": str(generation_dtype),
    }


def cache_file(model: nn.Module, tokenizer, prompts: Sequence[str], settings: dict[str, Any], *,
               model_id: str | None = None, cache_dir: Path | None = None) -> Path:
    """Where the completions of ``prompts`` sampled with ``settings`` (:func:`sampling_settings`) are kept.

    Args:
        model: the sampling model; its weights are fingerprinted unless ``model_id`` names it.
        tokenizer: its tokenizer.
        prompts: the prompts, in order.
        settings: the sampling settings.
        model_id: a name to key the cache by instead of the weights' fingerprint.
        cache_dir: the cache folder; None = ``<alignkit cache>/reward_pairs``.
    """
    key = _sha({
        "model": model_id or model_fingerprint(model),
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "prompts": list(prompts),
        **settings,
    })
    return (cache_dir or default_cache_dir("reward_pairs")) / f"{key[:32]}.jsonl"


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write to a temporary sibling, then rename (:func:`~alignkit.cache.writing`): readers never see a
    half-written file, and a write that fails leaves the previous file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, encoding="utf-8") as f:
        f.writelines(to_json(row, indent=None, ensure_ascii=False) + "\n" for row in rows)


def write_cache(path: Path, prompts: Sequence[str], texts: list[list[str]], meta: dict[str, Any]) -> None:
    """Keep the (P, K) completion ``texts`` of ``prompts`` in ``path``, after a line of ``meta``."""
    rows = [{"meta": meta}] + [{"prompt": p, "completions": t} for p, t in zip(prompts, texts, strict=True)]
    write_jsonl_atomic(path, rows)


def read_cache(path: Path, prompts: Sequence[str], k: int) -> list[list[str]] | None:
    """The cached (P, K) completion texts, or None when the file is missing, unreadable, not strict JSON lines
    (garbage, NaN) or does not match: a miss, sampled again and rewritten."""
    if not path.exists():
        return None
    try:
        rows = read_jsonl(path, what="a pair-cache record")
    except RunFileError as err:
        log.warning("ignoring unreadable pair cache (it is sampled again): %s", err)
        return None
    texts: list[Any] = [row.get("completions") for row in rows[1:]]
    if not rows or "meta" not in rows[0] or len(texts) != len(prompts) or any(
        row.get("prompt") != p or not isinstance(t, list) or len(t) != k or not all(isinstance(c, str) for c in t)
        for row, p, t in zip(rows[1:], prompts, texts, strict=True)
    ):
        log.warning("ignoring pair cache %s: it does not match the prompts (it is sampled again)", path)
        return None
    return texts
