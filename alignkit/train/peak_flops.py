"""This machine's limits: peak matmul throughput in a dtype, and memory read bandwidth; measured once, kept as
JSON in the alignkit cache.

Each measure is the best of repetitions over a few seconds (the best, because other processes on a shared
machine only ever slow a repetition down): square matmuls for FLOP/s, a sum over a buffer far larger than
any cache for bytes/s. They are kept per CPU model or GPU name, torch version, dtype and, on CPUs, torch's
thread count, in ``<cache>/peak_flops/``. A cache file that does not read back as the expected JSON is
measured again and replaced; it is only ever parsed as JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignkit.cache import cache_dir, write_atomic
from alignkit.jsonio import to_json
from alignkit.models.precision import detect_hardware

__all__ = ["measure_matmul_flops", "measure_read_bandwidth", "peak_bandwidth", "peak_flops", "peak_key"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def peak_key(device: torch.device, dtype: str) -> dict[str, Any]:
    """What the peak depends on: the processor, torch, the dtype (and on CPUs the threads torch uses)."""
    key: dict[str, Any] = {"device": detect_hardware(device).name or device.type, "device_type": device.type,
                           "torch": torch.__version__, "dtype": dtype}
    if device.type == "cpu":
        key["threads"] = torch.get_num_threads()
    return key


def _best_seconds(device: torch.device, work: Callable[[], object], seconds: float) -> float:
    """The fastest of repeated ``work()`` calls over about ``seconds`` (after one warm-up call)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    work()  # warm-up: kernel selection and first-touch allocation
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() >= deadline:
            return best


def measure_matmul_flops(device: torch.device, dtype: str, *, size: int | None = None,
                         seconds: float = 2.0) -> tuple[float, int]:
    """(best FLOP/s of a ``size``² matmul in ``dtype`` over about ``seconds``, size)."""
    size = size or (4096 if device.type == "cuda" else 1024)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype])
    return 2.0 * size**3 / _best_seconds(device, lambda: torch.matmul(a, b), seconds), size


def measure_read_bandwidth(device: torch.device, *, megabytes: int | None = None,
                           seconds: float = 2.0) -> tuple[float, int]:
    """(best bytes/s of summing a ``megabytes`` fp32 buffer, far beyond the caches, size in bytes)."""
    size = (megabytes or (2048 if device.type == "cuda" else 256)) * 2**20
    buffer = torch.ones(size // 4, device=device)
    return size / _best_seconds(device, buffer.sum, seconds), size


def _read(path: Path, key: dict[str, Any], field: str) -> float | None:
    """The cached ``field`` for ``key``, or None when the file is missing, unreadable or of another key."""
    try:
        data = json.loads(path.read_text())
        value = data[field]
        if data.get("key") == key and isinstance(value, (int, float)) and value > 0:
            return float(value)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _cached(name: str, key: dict[str, Any], field: str, size_field: str,
            measure: Callable[[], tuple[float, int]], seconds: float) -> dict[str, Any]:
    """The cached measure ``field`` for ``key`` in ``<cache>/peak_flops/<name>-<digest>.json``, or measured now."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, allow_nan=False).encode()).hexdigest()[:16]
    path = cache_dir("peak_flops") / f"{name}-{digest}.json"
    value = _read(path, key, field)
    cached = value is not None
    if value is None:
        value, size = measure()
        record = {"key": key, field: value, size_field: size, "seconds": seconds,
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(path, to_json(record) + "\n")
    return {field: value, "key": key, "cached": cached, "file": str(path)}


def peak_flops(device: torch.device, dtype: str, *, seconds: float = 2.0) -> dict[str, Any]:
    """This machine's peak matmul FLOP/s in ``dtype`` on ``device``, from the cache or measured (and cached).

    Returns:
        ``{"flops_per_second", "key", "cached", "file"}``; ``cached`` tells whether it was read back.
    """
    return _cached(dtype, peak_key(device, dtype), "flops_per_second", "matrix_size",
                   lambda: measure_matmul_flops(device, dtype, seconds=seconds), seconds)


def peak_bandwidth(device: torch.device, *, seconds: float = 2.0) -> dict[str, Any]:
    """This machine's memory read bandwidth on ``device`` (bytes/s), from the cache or measured (and cached).

    Returns:
        ``{"bytes_per_second", "key", "cached", "file"}``.
    """
    return _cached("read_bandwidth", peak_key(device, "read_bandwidth"), "bytes_per_second", "buffer_bytes",
                   lambda: measure_read_bandwidth(device, seconds=seconds), seconds)
