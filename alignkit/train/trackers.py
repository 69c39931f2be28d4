"""Experiment trackers (TensorBoard, Weights & Biases, trackio) fed what ``metrics.jsonl`` records.

A run opens its trackers once (:func:`tracking`, main process only) with the recipe as hyperparameters;
every :class:`~alignkit.train.metrics.MetricsWriter` below it sends each record's scalars to them
(:func:`log_scalars`) without the trackers being passed down. A scalar ``name`` of a record of stage
``stage`` at step ``step`` is logged as ``<stage>/<name>`` at that step: the names of ``metrics.jsonl``,
with the stage in front so that one tracker run holds every stage of an alignkit run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import yaml

from alignkit.cache import check_inside, disk_full_guard, is_disk_full
from alignkit.train.tracker_config import LoggingConfig, TrackioConfig, WandbConfig, missing_tracker_packages

__all__ = ["TensorBoardTracker", "TrackioTracker", "Tracker", "WandbTracker", "log_scalars", "open_trackers",
           "record_scalars", "tracking"]


class Tracker(Protocol):
    """One experiment tracker: scalars by step, then closed."""

    def log(self, stage: str, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record besides its ``step``, by their metrics.jsonl names."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}


def _tagged(stage: str, scalars: Mapping[str, float]) -> dict[str, float]:
    return {f"{stage}/{name}": value for name, value in scalars.items()}


def _quiet_writer_thread_disk_full(args: threading.ExceptHookArgs, *, default: Any) -> None:
    """A TensorBoard writer thread's full-device error is re-raised in the main thread, which reports it as
    one line (:class:`~alignkit.cache.DiskFullError`); the thread's own traceback would only repeat it."""
    if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError) \
            and is_disk_full(args.exc_value):
        return
    default(args)


class TensorBoardTracker:
    """Event files in ``log_dir``; the recipe as a text summary named ``recipe`` (step 0)."""

    def __init__(self, log_dir: Path, hparams: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A full device surfaces from TensorBoard's writer thread as a bare OSError: say what filled up.
        self._full = partial(disk_full_guard, log_dir.parent, log_dir.name + "/")
        if getattr(threading.excepthook, "func", None) is not _quiet_writer_thread_disk_full:
            threading.excepthook = partial(_quiet_writer_thread_disk_full, default=threading.excepthook)
        with self._full():
            self._writer = SummaryWriter(str(check_inside(log_dir)))
            # Indented four spaces: TensorBoard renders text as Markdown, and this keeps the YAML a code block.
            text = yaml.safe_dump(dict(hparams), sort_keys=False)
            self._writer.add_text("recipe", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log(self, stage: str, step: int, scalars: Mapping[str, float]) -> None:
        with self._full():
            for tag, value in _tagged(stage, scalars).items():
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        with self._full():
            self._writer.close()


class WandbTracker:
    """One W&B run (offline by default, in ``<run>/wandb/``); the recipe is its config.

    W&B wants one increasing step per run, but each stage counts its own steps from 1: every stage gets
    its own step metric ``<stage>/step`` (W&B's ``define_metric``), logged with the stage's scalars.
    """

    def __init__(self, cfg: WandbConfig, run_dir: Path, name: str, hparams: Mapping[str, Any]) -> None:
        import wandb

        # console off: W&B would otherwise capture the terminal that the progress bars draw on.
        self._run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or name, mode=cfg.mode,
                               dir=str(check_inside(run_dir / "wandb").parent), config=dict(hparams), tags=cfg.tags or None,
                               settings=wandb.Settings(console="off"))
        self._stages: set[str] = set()

    def log(self, stage: str, step: int, scalars: Mapping[str, float]) -> None:
        if stage not in self._stages:
            self._stages.add(stage)
            self._run.define_metric(f"{stage}/step")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self._run.log({**_tagged(stage, scalars), f"{stage}/step": step})

    def close(self) -> None:
        self._run.finish()


class TrackioTracker:
    """One trackio run (local unless ``space_id`` is set); the recipe is its config."""

    def __init__(self, cfg: TrackioConfig, name: str, hparams: Mapping[str, Any]) -> None:
        import trackio

        self._run = trackio.init(project=cfg.project, name=cfg.name or name, space_id=cfg.space_id,
                                 config=dict(hparams), auto_log_gpu=False, auto_log_cpu=False)

    def log(self, stage: str, step: int, scalars: Mapping[str, float]) -> None:
        self._run.log(_tagged(stage, scalars), step=step)

    def close(self) -> None:
        self._run.finish()


def open_trackers(cfg: LoggingConfig, run_dir: Path, *, name: str, hparams: Mapping[str, Any]) -> list[Tracker]:
    """The trackers ``cfg`` turns on, each opened with ``hparams`` logged once.

    Raises:
        ValueError: a tracker's package is missing (the message names the extra that installs it).
    """
    missing = missing_tracker_packages(cfg)
    if missing:
        raise ValueError("; ".join(f"logging.{field}: {why}" for field, why in missing))
    trackers: list[Tracker] = []
    if cfg.tensorboard:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard", hparams))
    if cfg.wandb is not None:
        trackers.append(WandbTracker(cfg.wandb, run_dir, name, hparams))
    if cfg.trackio is not None:
        trackers.append(TrackioTracker(cfg.trackio, name, hparams))
    return trackers


_ACTIVE: list[Tracker] = []


@contextmanager
def tracking(trackers: list[Tracker]) -> Iterator[None]:
    """Send every metrics record written inside the block to ``trackers``; close them at its end."""
    _ACTIVE.extend(trackers)
    try:
        yield
    finally:
        for tracker in trackers:
            _ACTIVE.remove(tracker)
        for tracker in trackers:
            tracker.close()


def log_scalars(stage: str, step: int, record: Mapping[str, Any]) -> None:
    """Log a metrics record's scalars (:func:`record_scalars`) to the trackers open now (none: nothing)."""
    if not _ACTIVE:
        return
    scalars = record_scalars(record)
    for tracker in _ACTIVE:
        tracker.log(stage, step, scalars)
