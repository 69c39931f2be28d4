"""Where a run's time goes: named phases that code opens around its work, and the model FLOPs done in them.

A run records into one :class:`PhaseClock` (:func:`recording`); any code below it opens ``phase("generation")``
without the clock being passed down (with no clock recording, a phase costs nothing). Phases nest: a phase
opened inside another is kept under its path, so the same ``generate`` call counts as pair generation while
the data is prepared and as evaluation generation afterwards. Only the thread that records is timed: a phase
opened by a worker thread would interleave with the main thread's stack.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

__all__ = ["PhaseClock", "PhaseTotal", "count_flops", "count_weight_reads", "phase", "recording", "timed"]

P = ParamSpec("P")
R = TypeVar("R")

Path = tuple[str, ...]
OTHER = "other (outside any phase)"


@dataclass
class PhaseTotal:
    """What a phase (one path) added up to: seconds, times opened, model FLOPs by compute dtype, and for
    token-by-token decoding the bytes of weights read and the tokens produced."""

    seconds: float = 0.0
    calls: int = 0
    flops: dict[str, float] = field(default_factory=dict)
    weight_bytes: float = 0.0
    tokens: int = 0


class PhaseClock:
    """Totals of nested phases.

    Args:
        clock: seconds from any origin (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.totals: dict[Path, PhaseTotal] = {}  # in the order phases were first opened
        self._stack: list[str] = []
        self._thread = threading.get_ident()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` under the phases open now (a phase inside itself is one phase)."""
        if threading.get_ident() != self._thread or (self._stack and self._stack[-1] == name):
            yield
            return
        self._stack.append(name)
        total = self.totals.setdefault(tuple(self._stack), PhaseTotal())
        start = self.clock()
        try:
            yield
        finally:
            total.seconds += self.clock() - start
            total.calls += 1
            self._stack.pop()

    def count_flops(self, flops: float, dtype: str) -> None:
        """Add model FLOPs computed in ``dtype`` to the innermost open phase (dropped outside every phase)."""
        if not self._stack or threading.get_ident() != self._thread:
            return
        by_dtype = self.totals[tuple(self._stack)].flops
        by_dtype[dtype] = by_dtype.get(dtype, 0.0) + flops

    def count_weight_reads(self, weight_bytes: float, tokens: int) -> None:
        """Add weight bytes read and tokens decoded to the innermost open phase (dropped outside every phase)."""
        if not self._stack or threading.get_ident() != self._thread:
            return
        total = self.totals[tuple(self._stack)]
        total.weight_bytes += weight_bytes
        total.tokens += tokens

    def rows(self, wall_seconds: float, peaks: Mapping[str, float] | None = None,
             bandwidth: float | None = None) -> list[dict[str, Any]]:
        """The time table: every phase (parents before their children), then the time outside all phases.

        Args:
            wall_seconds: the run's wall time; every share is of it, so the top-level rows and the "other"
                row sum to 1.
            peaks: measured peak FLOP/s by dtype; a phase with FLOPs in a dtype it lacks gets no fraction.
            bandwidth: measured memory read bandwidth in bytes/s, for the decoding phases' bound.

        Returns:
            Dicts with ``phase`` (its name), ``path``, ``depth``, ``seconds``, ``share``, ``calls``, ``flops``
            (by dtype), ``precision`` (the dtypes the phase's model computed in, as the code that ran it
            counted its FLOPs; [] for a phase that ran no model), ``flops_per_second`` and ``peak_fraction`` (None where no FLOPs were counted); the
            fraction is the time the FLOPs would take at each dtype's peak over the time they took. Decoding
            phases add ``tokens_per_second`` and ``bandwidth_fraction``: the time reading their weights once
            per forward would take at ``bandwidth`` over the time they took (None elsewhere).
        """
        peaks = peaks or {}
        wall = max(wall_seconds, 1e-12)
        first = {path: i for i, path in enumerate(self.totals)}  # a parent is opened before its children
        ordered = sorted(self.totals, key=lambda p: [first[p[:i + 1]] for i in range(len(p))])
        out = [_row(path, self.totals[path], wall, peaks, bandwidth) for path in ordered]
        outside = wall_seconds - sum(t.seconds for p, t in self.totals.items() if len(p) == 1)
        out.append(_row((OTHER,), PhaseTotal(seconds=max(outside, 0.0)), wall, peaks, bandwidth))
        return out


def _row(path: Path, total: PhaseTotal, wall: float, peaks: Mapping[str, float],
         bandwidth: float | None) -> dict[str, Any]:
    flops = sum(total.flops.values())
    rate = fraction = tokens_rate = bandwidth_fraction = None
    if flops and total.seconds > 0:
        rate = flops / total.seconds
        if all(peaks.get(d) for d in total.flops):
            fraction = sum(f / peaks[d] for d, f in total.flops.items()) / total.seconds
    if total.tokens and total.seconds > 0:
        tokens_rate = total.tokens / total.seconds
        if bandwidth:
            bandwidth_fraction = total.weight_bytes / bandwidth / total.seconds
    return {"phase": path[-1], "path": list(path), "depth": len(path) - 1, "seconds": total.seconds,
            "share": total.seconds / wall, "calls": total.calls, "flops": dict(total.flops),
            "precision": sorted(total.flops),
            "flops_per_second": rate, "peak_fraction": fraction, "weight_bytes": total.weight_bytes,
            "tokens": total.tokens, "tokens_per_second": tokens_rate, "bandwidth_fraction": bandwidth_fraction}


_active: PhaseClock | None = None


@contextmanager
def recording(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Make ``clock`` the one :func:`phase` and :func:`count_flops` record into, for the block."""
    global _active
    previous, _active = _active, clock
    try:
        yield clock
    finally:
        _active = previous


def phase(name: str) -> AbstractContextManager[None]:
    """Time the block as phase ``name`` of the recording clock (nothing when none records)."""
    return _active.phase(name) if _active is not None else nullcontext()


def count_flops(flops: float, dtype: str) -> None:
    """Add model FLOPs (in compute ``dtype``, e.g. ``"float32"``) to the innermost open phase, if recording."""
    if _active is not None:
        _active.count_flops(flops, dtype)


def count_weight_reads(weight_bytes: float, tokens: int) -> None:
    """Add decoding's weight reads (bytes) and the tokens they produced to the innermost open phase, if recording."""
    if _active is not None:
        _active.count_weight_reads(weight_bytes, tokens)


def timed(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each call is timed as phase ``name`` (see :func:`phase`)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with phase(name):
                return fn(*args, **kwargs)

        return inner

    return wrap
