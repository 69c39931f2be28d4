"""Measures of this machine, taken once and kept: best-of timing and a JSON cache keyed by what a measure
depends on.

A measure is the best of repetitions over a few seconds (the best, because other processes on a shared
machine only ever slow a repetition down). It is kept per CPU model or GPU name, torch version and, on CPUs,
torch's thread count, in ``<cache>/peak_flops/``. A cache file that does not read back as the expected JSON is
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
from alignkit.models.hardware import detect_hardware

__all__ = ["DTYPES", "PHASE_KERNELS", "best_seconds", "cached_measure", "machine_key", "measure_matmul_flops",
           "phase_flops"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def machine_key(device: torch.device, what: str) -> dict[str, Any]:
    """What a measure of ``what`` depends on: the processor, torch, and on CPUs the threads torch uses."""
    key: dict[str, Any] = {"device": detect_hardware(device).name or device.type, "device_type": device.type,
                           "torch": torch.__version__, "dtype": what}
    if device.type == "cpu":
        key["threads"] = torch.get_num_threads()
    return key


def best_seconds(device: torch.device, work: Callable[[], object], seconds: float) -> float:
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
                         seconds: float = 2.0, rows: int | None = None) -> tuple[float, int]:
    """(best FLOP/s of a (``rows`` x ``size``) @ (``size`` x ``size``) matmul in ``dtype``, size).

    ``rows`` defaults to ``size`` (a square matmul: compute-bound); a few rows against a large ``size``
    measure what decoding a small batch does: read every weight once per token (bandwidth-bound).
    """
    size = size or (4096 if device.type == "cuda" else 1024)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows or size, size, generator=generator).to(device, DTYPES[dtype])
    b = torch.randn(size, size, generator=generator).to(device, DTYPES[dtype])
    return 2.0 * a.shape[0] * size**2 / best_seconds(device, lambda: torch.matmul(a, b), seconds), size


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


def cached_measure(name: str, key: dict[str, Any], field: str, size_field: str,
                   measure: Callable[[], tuple[float, int]], seconds: float) -> dict[str, Any]:
    """The cached measure ``field`` for ``key`` in ``<cache>/peak_flops/<name>-<digest>.json``, or measured now
    (``measure()`` returns the value and the problem size it used).

    Returns:
        ``{field, "key", "cached", "file"}``; ``cached`` tells whether it was read back.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("peak_flops") / f"{name}-{digest}.json"
    value = _read(path, key, field)
    cached = value is not None
    if value is None:
        value, size = measure()
        record = {"key": key, field: value, size_field: size, "seconds": seconds,
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(path, json.dumps(record, indent=2) + "\n")
    return {field: value, "key": key, "cached": cached, "file": str(path)}


# The kernel each phase spends its time in, as (rows, size): a (rows x size) @ (size x size) matmul.
# Training multiplies large blocks (compute-bound); decoding a small batch reads every weight once per token
# (bandwidth-bound: a weight matrix far beyond the caches against a few rows).
PHASE_KERNELS = {
    "cpu": {"training": (512, 512), "decoding": (4, 4096)},  # a few seconds where bf16 is emulated
    "cuda": {"training": (4096, 4096), "decoding": (8, 8192)},
}


def phase_flops(device: torch.device, phase: str, dtype: str, *, seconds: float = 0.5) -> dict[str, Any]:
    """The FLOP/s of ``phase``'s kernel (:data:`PHASE_KERNELS`) in ``dtype`` on ``device``: from the cache, or
    measured over about ``seconds`` (and cached).

    Returns:
        ``{"flops_per_second", "key", "cached", "file"}``.
    """
    rows, size = PHASE_KERNELS[device.type][phase]
    key = {**machine_key(device, dtype), "phase": phase, "rows": rows, "size": size}
    return cached_measure(f"phase-{phase}-{dtype}", key, "flops_per_second", "matrix_size",
                          lambda: measure_matmul_flops(device, dtype, size=size, rows=rows, seconds=seconds),
                          seconds)
