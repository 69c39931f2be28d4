"""Metric accumulation and logging: metrics.jsonl (always) and TensorBoard (when installed)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from alignkit.train.distributed import DistEnv, all_reduce_sum

__all__ = ["MetricSums", "MetricsWriter"]


class MetricSums:
    """Weighted sums of per-example metrics across micro-batches and processes; ``means()`` divides."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, float] = defaultdict(float)

    def add(self, name: str, values: torch.Tensor) -> None:
        values = values.detach().float()
        self._sums[name] += float(values.sum())
        self._counts[name] += values.numel()

    def add_total(self, name: str, value: float, count: float) -> None:
        self._sums[name] += value
        self._counts[name] += count

    def means(self, env: DistEnv) -> dict[str, float]:
        names = sorted(self._sums)
        if env.enabled:
            packed = torch.tensor([[self._sums[n], self._counts[n]] for n in names], dtype=torch.float64)
            all_reduce_sum(packed, env)
            return {n: float(s / c) if c else float("nan") for n, (s, c) in zip(names, packed.tolist(), strict=True)}
        return {n: self._sums[n] / self._counts[n] if self._counts[n] else float("nan") for n in names}


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is not a whole JSON object."""
    try:
        record = json.loads(line)
        return int(record.get("step", 0)) if isinstance(record, dict) else None
    except (TypeError, ValueError):
        return None


class MetricsWriter:
    """Appends one JSON object a line to ``metrics.jsonl``; mirrors scalars to TensorBoard if available."""

    def __init__(self, path: Path, *, enabled: bool = True, resume_from_step: int | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None and path.exists():
            # Drop what was logged after the checkpoint we resume from (the resumed run logs it again), and
            # any line a kill tore in half.
            kept = [line for line in path.read_text(errors="replace").splitlines()
                    if (step := _step_of(line)) is not None and step <= resume_from_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_from_step is None and path.exists():
            path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"{record.get('stage', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
