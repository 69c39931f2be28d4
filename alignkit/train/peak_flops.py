"""This machine's peak matmul throughput in a dtype: measured once, kept as JSON in the alignkit cache.

The measure is the best of repeated square matmuls over a few seconds (the best, because other processes on
a shared machine only ever slow a repetition down). It is kept per CPU model or GPU name, torch version,
dtype and, on CPUs, torch's thread count, in ``<cache>/peak_flops/``. A cache file that does not read back as
the expected JSON is measured again and replaced; it is only ever parsed as JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from alignkit.cache import cache_dir, write_atomic
from alignkit.models.precision import detect_hardware

__all__ = ["measure_matmul_flops", "peak_flops", "peak_key"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def peak_key(device: torch.device, dtype: str) -> dict[str, Any]:
    """What the peak depends on: the processor, torch, the dtype (and on CPUs the threads torch uses)."""
    key: dict[str, Any] = {"device": detect_hardware(device).name or device.type, "device_type": device.type,
                           "torch": torch.__version__, "dtype": dtype}
    if device.type == "cpu":
        key["threads"] = torch.get_num_threads()
    return key


def measure_matmul_flops(device: torch.device, dtype: str, *, size: int | None = None,
                         seconds: float = 2.0) -> tuple[float, int]:
    """(best FLOP/s of a ``size``² matmul in ``dtype`` over about ``seconds``, size)."""
    size = size or (4096 if device.type == "cuda" else 1024)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up: kernel selection and first-touch allocation
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() >= deadline:
            break
    return 2.0 * size**3 / best, size


def _read(path: Path, key: dict[str, Any]) -> float | None:
    """The cached FLOP/s for ``key``, or None when the file is missing, unreadable or of another key."""
    try:
        data = json.loads(path.read_text())
        value = data["flops_per_second"]
        if data.get("key") == key and isinstance(value, (int, float)) and value > 0:
            return float(value)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def peak_flops(device: torch.device, dtype: str, *, seconds: float = 2.0) -> dict[str, Any]:
    """This machine's peak matmul FLOP/s in ``dtype`` on ``device``, from the cache or measured (and cached).

    Returns:
        ``{"flops_per_second", "key", "cached", "file"}``; ``cached`` tells whether it was read back.
    """
    key = peak_key(device, dtype)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("peak_flops") / f"{dtype}-{digest}.json"
    value = _read(path, key)
    cached = value is not None
    if value is None:
        value, size = measure_matmul_flops(device, dtype, seconds=seconds)
        record = {"key": key, "flops_per_second": value, "matrix_size": size, "seconds": seconds,
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(path, json.dumps(record, indent=2) + "\n")
    return {"flops_per_second": value, "key": key, "cached": cached, "file": str(path)}
