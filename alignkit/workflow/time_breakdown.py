"""The report's ``time_breakdown`` section: the run's phases, their shares of the wall time, the model FLOP/s
of the phases that count FLOPs as a fraction of this machine's measured peak in their dtype, and for token-by-
token generation the tokens/s and how close it came to the bound set by reading the weights once per step."""

from __future__ import annotations

from typing import Any

import torch

from alignkit.timing import PhaseClock
from alignkit.train.peak_flops import peak_bandwidth, peak_flops

__all__ = ["CONVENTION", "time_breakdown"]

CONVENTION = ("model FLOPs: 2·N per token forward (generation, log-probs), 4·N + 2·N_trainable per token "
              "trained (6·N when every weight trains); N = parameters that multiply every token (all but the "
              "input embedding tables; a tied output head counted); non-padding tokens; attention scores left "
              "out. Peak: best square matmul of this machine in the same dtype (alignkit/models/flops.py). Generation's 'of "
              "bandwidth bound': the time reading the weights of N once per forward (prefill and every decoding "
              "step) takes at this machine's measured read bandwidth, over the time generation took")


def _reached(clock: PhaseClock) -> tuple[dict[str, float], float]:
    """The highest FLOP/s any phase computing in one dtype reached, by dtype, and the highest weight-read
    bytes/s of a decoding phase: a cached peak below either was measured at a busy moment."""
    flops: dict[str, float] = {}
    bandwidth = 0.0
    for total in clock.totals.values():
        if total.seconds <= 0:
            continue
        if len(total.flops) == 1:
            (dtype, count), = total.flops.items()
            flops[dtype] = max(flops.get(dtype, 0.0), count / total.seconds)
        bandwidth = max(bandwidth, total.weight_bytes / total.seconds)
    return flops, bandwidth


def time_breakdown(clock: PhaseClock, wall_seconds: float, device: torch.device) -> dict[str, Any]:
    """The section, measuring (once per machine, then cached; again when this run beat the cached figure)
    the peak of every dtype a phase computed in."""
    dtypes = sorted({d for total in clock.totals.values() for d in total.flops})
    reached, reached_bandwidth = _reached(clock)
    peaks = {d: peak_flops(device, d, at_least=reached.get(d, 0.0)) for d in dtypes}
    decoded = any(total.weight_bytes for total in clock.totals.values())
    bandwidth = peak_bandwidth(device, at_least=reached_bandwidth) if decoded else None
    section: dict[str, Any] = {
        "wall_seconds": wall_seconds,
        "phases": clock.rows(wall_seconds, {d: p["flops_per_second"] for d, p in peaks.items()},
                             bandwidth["bytes_per_second"] if bandwidth else None),
        "peak_flops": {d: {"flops_per_second": p["flops_per_second"], **p["key"], "measured": p["measured"],
                           "remeasured": p["remeasured"]} for d, p in peaks.items()},
        "convention": CONVENTION,
    }
    if bandwidth:
        section["read_bandwidth"] = {"bytes_per_second": bandwidth["bytes_per_second"], **bandwidth["key"],
                                     "measured": bandwidth["measured"], "remeasured": bandwidth["remeasured"]}
    return section
