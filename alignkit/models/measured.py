"""Measures of this machine, taken once and kept: best-of timing and a JSON cache keyed by what a measure
depends on.

A measure is the best of repetitions (at least :data:`MIN_REPEATS`, over a few seconds; the best, because
other processes on a shared machine only ever slow a repetition down). It is kept per CPU model or GPU name,
torch version and, on CPUs, torch's thread count, in ``<cache>/peak_flops/``, with the time it was measured. A
busy moment can still halve a measure; a run that itself reaches more than the cached figure proves it, so
:func:`cached_measure` measures again when given such a figure (``at_least``) and keeps the best measure ever
taken. A cache file that does not read back as the expected JSON is measured again and replaced; it is only
ever parsed as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from alignkit.cache import cache_dir, write_atomic
from alignkit.jsonio import RunFileError, read_json, to_json
from alignkit.models.hardware import detect_hardware

__all__ = ["DTYPES", "MIN_REPEATS", "PHASE_KERNELS", "best_seconds", "cached_measure", "machine_key", "measure_matmul_flops",
           "phase_flops"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_REPEATS = 5  # timed repetitions however long each takes: one slow moment is never the whole measure


def machine_key(device: torch.device, what: str) -> dict[str, Any]:
    """What a measure of ``what`` depends on: the processor, torch, and on CPUs the threads torch uses."""
    key: dict[str, Any] = {"device": detect_hardware(device).name or device.type, "device_type": device.type,
                           "torch": torch.__version__, "dtype": what}
    if device.type == "cpu":
        key["threads"] = torch.get_num_threads()
    return key


def best_seconds(device: torch.device, work: Callable[[], object], seconds: float, *,
                 min_repeats: int = MIN_REPEATS, clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of repeated ``work()`` calls: at least ``min_repeats`` of them, and more until about
    ``seconds`` have passed (after one warm-up call). ``clock`` is injectable for tests."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    work()  # warm-up: kernel selection and first-touch allocation
    sync()
    best = float("inf")
    deadline = clock() + seconds
    repeats = 0
    while True:
        start = clock()
        work()
        sync()
        best = min(best, clock() - start)
        repeats += 1
        if repeats >= min_repeats and clock() >= deadline:
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


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _read(path: Path, key: dict[str, Any], field: str) -> dict[str, Any] | None:
    """The cached record for ``key`` (its ``field`` a positive finite number), or None when the file is
    missing, not strict JSON (garbage, NaN, Infinity), of another key or holds a figure that is not one."""
    if not path.exists():
        return None
    try:
        data = read_json(path, what="a measure record")
    except RunFileError:
        return None
    checked = data.get("checked_against", 0.0)
    if data.get("key") == key and _positive(data.get(field)) and (checked == 0 or _positive(checked)):
        return cast(dict[str, Any], data)
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cached_measure(name: str, key: dict[str, Any], field: str, size_field: str,
                   measure: Callable[[], tuple[float, int]], seconds: float, at_least: float = 0.0) -> dict[str, Any]:
    """The cached measure ``field`` for ``key`` in ``<cache>/peak_flops/<name>-<digest>.json``, or measured now
    (``measure()`` returns the value and the problem size it used).

    A cached figure below ``at_least`` (what a run reached, which the peak cannot be below) is measured again,
    once per such figure: the record keeps the highest figure it was checked against, and the best of the old
    and new measures (a busy machine only ever lowers one).

    Returns:
        ``{field, "key", "cached", "file", "measured", "remeasured"}``: ``cached`` tells whether it was read
        back, ``measured`` when (UTC) the figure kept was measured, ``remeasured`` why it was measured again
        in this call (None if it was not).
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, allow_nan=False).encode()).hexdigest()[:16]
    path = cache_dir("peak_flops") / f"{name}-{digest}.json"
    record = _read(path, key, field)
    cached = record is not None
    checked = float(record.get("checked_against", 0.0)) if record else 0.0
    remeasured = None
    if record is not None and at_least > max(float(record[field]), checked):
        remeasured = f"a run reached {at_least / 1e9:.4g}G/s, above the cached {float(record[field]) / 1e9:.4g}G/s"
    if record is None or remeasured is not None:
        cached = False
        value, size = measure()
        if record is not None and float(record[field]) >= value:
            record = {**record, "checked_against": max(at_least, checked), "last_measure": value,
                      "last_measured": _now()}
        else:
            record = {"key": key, field: value, size_field: size, "seconds": seconds, "measured": _now(),
                      "checked_against": max(at_least, checked)}
        write_atomic(path, to_json(record) + "\n")
    return {field: float(record[field]), "key": key, "cached": cached, "file": str(path),
            "measured": record.get("measured"), "remeasured": remeasured}


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
