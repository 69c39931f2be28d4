"""This machine's limits: peak matmul throughput in a dtype, and memory read bandwidth; measured once, kept as
JSON in the alignkit cache.

Each measure is the best of at least 5 repetitions over a few seconds: square matmuls for FLOP/s, a sum over a
buffer far larger than any cache for bytes/s. They are kept per CPU model or GPU name, torch version, dtype and,
on CPUs, torch's thread count, in ``<cache>/peak_flops/`` (:mod:`alignkit.models.measured`), and measured again
when a run reaches more than the cached figure (``at_least``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from alignkit.models.measured import best_seconds, cached_measure, machine_key, measure_matmul_flops

__all__ = ["measure_matmul_flops", "measure_read_bandwidth", "peak_bandwidth", "peak_flops", "peak_key"]


def peak_key(device: torch.device, dtype: str) -> dict[str, Any]:
    """What the peak depends on: the processor, torch, the dtype (and on CPUs the threads torch uses)."""
    return machine_key(device, dtype)


def measure_read_bandwidth(device: torch.device, *, megabytes: int | None = None,
                           seconds: float = 2.0) -> tuple[float, int]:
    """(best bytes/s of summing a ``megabytes`` fp32 buffer, far beyond the caches, size in bytes)."""
    size = (megabytes or (2048 if device.type == "cuda" else 256)) * 2**20
    buffer = torch.ones(size // 4, device=device)
    return size / best_seconds(device, buffer.sum, seconds), size


def peak_flops(device: torch.device, dtype: str, *, seconds: float = 2.0, at_least: float = 0.0,
               measure: Callable[[], tuple[float, int]] | None = None) -> dict[str, Any]:
    """This machine's peak matmul FLOP/s in ``dtype`` on ``device``, from the cache or measured (and cached).

    Args:
        at_least: FLOP/s a run reached in ``dtype``; a cached peak below it is measured again.
        measure: ``() -> (FLOP/s, matrix size)``; :func:`measure_matmul_flops` by default (tests inject one).

    Returns:
        ``{"flops_per_second", "key", "cached", "file", "measured", "remeasured"}``
        (:func:`~alignkit.models.measured.cached_measure`).
    """
    return cached_measure(dtype, peak_key(device, dtype), "flops_per_second", "matrix_size",
                          measure or (lambda: measure_matmul_flops(device, dtype, seconds=seconds)), seconds,
                          at_least)


def peak_bandwidth(device: torch.device, *, seconds: float = 2.0, at_least: float = 0.0) -> dict[str, Any]:
    """This machine's memory read bandwidth on ``device`` (bytes/s), from the cache or measured (and cached).

    Args:
        at_least: bytes/s a run's decoding read its weights at; a cached bandwidth below it is measured again.

    Returns:
        ``{"bytes_per_second", "key", "cached", "file", "measured", "remeasured"}`` (as :func:`peak_flops`).
    """
    return cached_measure("read_bandwidth", peak_key(device, "read_bandwidth"), "bytes_per_second", "buffer_bytes",
                          lambda: measure_read_bandwidth(device, seconds=seconds), seconds, at_least)
