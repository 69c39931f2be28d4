"""Reference log-probs computed once per (reference model, tokenized data) and reused from disk.

A reference-based loss (DPO, IPO, ...) only ever needs the reference model's log-probs of each pair's
chosen and rejected response, and the reference never changes. Computing them all once before training
frees the reference model's memory and its forward pass from every step; the file is keyed by a hash of
the model's identity (name, config, every parameter's bytes), of the tokenized pairs and of the autocast
dtype they are computed under (the training forward's: bf16 values are never reused by an fp32 run nor the
other way round), so any later run with the same reference, data and precision reuses it, and a change to
any of them computes a fresh one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from alignkit.cache import cache_dir, write_atomic
from alignkit.models.flops import forward_flops, matmul_parameters
from alignkit.models.logps import DEFAULT_LOGPS, ROOT_CALL, LogpsOptions, concatenated_forward
from alignkit.models.precision import autocast_context
from alignkit.progress import StepProgress
from alignkit.timing import count_flops

__all__ = ["ReferenceLogpsCache", "cache_key", "model_fingerprint"]

Collate = Callable[[Sequence[Any]], Mapping[str, Tensor]]


def _hash_tensor(name: str, tensor: Tensor, digest: Any) -> None:
    """Feed one state-dict entry's name, shape, dtype and bytes into ``digest``.

    A tensor subclass that wraps plain tensors (torchao's quantized weights: integer ``qdata``, ``scale``,
    ``zero_point``) supports few operations (no ``view``): it is hashed through the tensors it holds and
    its metadata (block size, target dtype), which is everything its values are computed from.
    """
    if isinstance(tensor, DTensor):  # sharded: the whole tensor (every process takes part, in this order)
        tensor = tensor.full_tensor()
    if is_traceable_wrapper_subclass(tensor):
        inner_names, meta = tensor.__tensor_flatten__()
        digest.update(f"{name}:{type(tensor).__name__}:{tuple(tensor.shape)}:{tensor.dtype}:{meta!r};".encode())
        for inner in inner_names:
            _hash_tensor(f"{name}.{inner}", getattr(tensor, inner), digest)
        return
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # A uint8 view hashes any dtype (bf16 has no numpy equivalent) without converting values.
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's config and the names, shapes, dtypes and bytes of its state dict (the tensors
    inside a quantized weight, with its quantization metadata)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        _hash_tensor(name, tensor, digest)
    return digest.hexdigest()


def _hash_data(value: Any, digest: Any) -> None:
    """Feed a tokenized example (nested dicts/lists of ints, strings, tensors) into ``digest``."""
    if isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value):
            digest.update(f"{key}=".encode())
            _hash_data(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _hash_data(item, digest)
            digest.update(b",")
        digest.update(b"]")
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str, allow_nan=False).encode())


def cache_key(
    model_id: str, model: nn.Module, pairs: Sequence[Any], extra: Mapping[str, Any] | None = None,
    *, autocast_dtype: torch.dtype | None = None,
) -> str:
    """The cache key of a reference model's log-probs over tokenized ``pairs``.

    Args:
        model_id: the reference's ``name_or_path`` (or any label of where it came from).
        model: the reference model; its config and parameters are fingerprinted.
        pairs: the tokenized examples, in dataset order (their token ids determine the log-probs).
        extra: anything else that changes the result, e.g. ``{"max_length": 512}``.
        autocast_dtype: the autocast the values are computed under (None: none, the weights' dtype).

    Returns:
        A sha256 hex digest.
    """
    digest = hashlib.sha256()
    digest.update(f"model_id={model_id};fingerprint={model_fingerprint(model)};".encode())
    if autocast_dtype is not None:  # absent without autocast: keys of values computed before this was keyed stay
        digest.update(f"autocast={autocast_dtype};".encode())
    digest.update(json.dumps(dict(extra or {}), sort_keys=True, default=str, allow_nan=False).encode())
    digest.update(f"n={len(pairs)};".encode())
    for pair in pairs:
        _hash_data(pair, digest)
    return digest.hexdigest()


class ReferenceLogpsCache:
    """The reference log-probs of every pair of a dataset, looked up by the pair's dataset index.

    Attributes:
        path: the safetensors file the values live in.
        chosen: (P,) fp32 summed reference log-probs of each pair's chosen response.
        rejected: (P,) the same for the rejected responses.
    """

    def __init__(self, path: Path, chosen: Tensor, rejected: Tensor) -> None:
        if chosen.shape != rejected.shape or chosen.dim() != 1:
            raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must be (P,)")
        self.path = path
        self.chosen = chosen
        self.rejected = rejected

    def __len__(self) -> int:
        return self.chosen.shape[0]

    @staticmethod
    def path_for(key: str) -> Path:
        """Where the file of cache key ``key`` lives."""
        return cache_dir("reference_logps") / f"{key}.safetensors"

    @classmethod
    def load(cls, key: str) -> ReferenceLogpsCache | None:
        """The cached values of ``key``, or None if they were never computed or the file is not what
        :meth:`build` writes (unreadable, other tensors, a value that is not finite): computed again then."""
        path = cls.path_for(key)
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
            chosen, rejected = tensors["chosen"], tensors["rejected"]
            ok = (chosen.dtype == rejected.dtype == torch.float32 and chosen.dim() == 1
                  and chosen.shape == rejected.shape and bool(torch.isfinite(chosen).all())
                  and bool(torch.isfinite(rejected).all()))
        except Exception:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            ok = False
        return cls(path, chosen, rejected) if ok else None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        pairs: Sequence[Any],
        collate_fn: Collate,
        batch_size: int,
        model_id: str,
        *,
        logps: LogpsOptions = DEFAULT_LOGPS,
        extra: Mapping[str, Any] | None = None,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = True,
    ) -> ReferenceLogpsCache:
        """Load the cached log-probs for (model, pairs), computing and storing them first if needed.

        Args:
            model: the reference causal LM (put in eval mode for the computation, then restored).
            pairs: tokenized examples in dataset order; ``collate_fn(pairs[i:j])`` makes a preference
                batch (chosen rows first, see :func:`concatenated_forward`). If the batch has an
                ``index`` entry it says which dataset positions its rows are; else positions i..j-1.
            collate_fn: turns a list of examples into a batch of tensors.
            batch_size: pairs per forward pass.
            model_id: the reference's name_or_path, part of the cache key.
            logps: chunk size and packing (:class:`~alignkit.models.logps.LogpsOptions`; they change
                rounding only, so they are not part of the key).
            extra: other settings that change the values (e.g. max lengths), part of the key.
            autocast_dtype: compute under this autocast (None: autocast off), part of the key; the training
                forward's (:func:`~alignkit.models.precision.resolve_precision` of ``train.precision``), so
                that at the first step a policy equal to its reference has log-ratios of exactly 0.
            progress: show a progress bar while computing.
        """
        key = cache_key(model_id, model, pairs, extra, autocast_dtype=autocast_dtype)
        cached = cls.load(key)
        if cached is not None and len(cached) == _size(pairs):
            return cached
        chosen, rejected = _compute(model, pairs, collate_fn, batch_size, logps, autocast_dtype, progress)
        path = cls.path_for(key)
        if _rank() == 0:  # every process holds the values; one writes them
            _atomic_save({"chosen": chosen, "rejected": rejected}, path,
                         {"model_id": model_id, "pairs": str(len(pairs))})
        return cls(path, chosen, rejected)

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Reference (chosen, rejected) log-probs, each (B,) fp32 on ``index``'s device, for dataset rows ``index`` (B,)."""
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(
                f"batch['index'] has values in [{int(index.min())}, {int(index.max())}] but the reference "
                f"cache {self.path.name} holds {len(self)} pairs: was it built from a different dataset?"
            )
        idx = index.to("cpu", torch.long)
        return self.chosen[idx].to(index.device), self.rejected[idx].to(index.device)


def _size(pairs: Sequence[Any]) -> int:
    """Rows of the cache: one per dataset position up to the largest ``index`` of ``pairs`` (positions of
    examples dropped while tokenizing stay empty), or one per pair when they carry no index."""
    indices = [i for p in pairs if isinstance(i := getattr(p, "index", None), int)]
    if pairs and len(indices) == len(pairs):
        return max(len(pairs), max(indices) + 1)
    return len(pairs)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _compute(
    model: nn.Module, pairs: Sequence[Any], collate_fn: Collate, batch_size: int, logps: LogpsOptions,
    autocast_dtype: torch.dtype | None, progress: bool,
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of every pair: (P,) chosen and (P,) rejected, fp32 on CPU.

    Under torchrun each process computes every world_size-th batch and the shares are summed, so every
    process ends with all the values. A sharded model gathers its parameters with every process at each
    forward: then every process runs as many forwards, one with a batch fewer repeating a batch it discards.
    """
    n = _size(pairs)
    rank, world = _rank(), _world_size()
    starts = list(range(0, len(pairs), batch_size))
    mine = starts[rank::world]
    rounds = -(-len(starts) // world) if hasattr(model, ROOT_CALL) else len(mine)
    chosen, rejected, seen = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    device = next(model.parameters()).device
    n_matmul = matmul_parameters(model)  # for the run's time table: 2·N per non-padding token
    dtype = str(autocast_dtype or next(model.parameters()).dtype).removeprefix("torch.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), StepProgress(Console(stderr=True), "reference log-probs", len(mine),
                                           enabled=progress and rank == 0) as bar:
            for i in range(rounds):
                start = mine[min(i, len(mine) - 1)] if mine else 0
                batch = collate_fn(list(pairs[start : start + batch_size]))
                index = batch.get("index")
                if index is None:
                    index = torch.arange(start, min(start + batch_size, len(pairs)))
                inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
                with autocast_context(device.type, autocast_dtype):
                    out = concatenated_forward(model, inputs, logps=logps)
                if i < len(mine):  # past its share a process only keeps pace with the others
                    count_flops(forward_flops(n_matmul, int(inputs["attention_mask"].sum())), dtype)
                    chosen[index.cpu()] = out["chosen_logps"].float().cpu()
                    rejected[index.cpu()] = out["rejected_logps"].float().cpu()
                    seen[index.cpu()] = 1.0
                    bar.update(i + 1)
    finally:
        model.train(was_training)
    if world > 1:
        shares = torch.stack([chosen, rejected, seen]).to(device)  # NCCL reduces device tensors only
        dist.all_reduce(shares, op=dist.ReduceOp.SUM)
        chosen, rejected, seen = shares.cpu().unbind(0)
    expected = torch.zeros(n)
    expected[[getattr(p, "index", i) for i, p in enumerate(pairs)]] = 1.0
    missing = (seen != expected).nonzero().flatten()
    if missing.numel():
        raise ValueError(f"the collated batches' 'index' never covered pairs {missing[:10].tolist()} ...")
    return chosen, rejected


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` to ``path`` in one rename (:func:`~alignkit.cache.write_atomic`): readers never see half
    a file, and a failed save leaves the previous one."""
    write_atomic(path, save(tensors, metadata=metadata))
