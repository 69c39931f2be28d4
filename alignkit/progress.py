"""Progress of a long step: a bar on a terminal, a plain line now and then anywhere else.

A bar redraws itself in place, which a log file (``make demo > log 2>&1``, CI) keeps as one line per redraw;
off a terminal a step prints ``description: done/total (elapsed)`` when it starts, whenever it crosses another
tenth of its total or :data:`PLAIN_EVERY_SECONDS` have passed since the last line, and when it ends.
:func:`quiet_library_bars` does the same for the bars transformers and huggingface_hub draw while loading.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["PLAIN_EVERY_SECONDS", "ProgressFn", "RateColumn", "StepProgress", "quiet_library_bars"]

# Called after each batch of a long step with (items done, items in total).
ProgressFn = Callable[[int, int], None]

PLAIN_EVERY_SECONDS = 60.0


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``3.20 comparisons/s`` (``--`` before the first one is done)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"-- {self.unit}/s")


class StepProgress:
    """One long step's progress (``with StepProgress(console, "pairs", total) as p: p.update(done)``).

    Args:
        console: where it goes; a bar when ``console.is_terminal``, plain lines otherwise.
        description: what the step is (the bar's label and each line's start).
        total: units to do (None while unknown).
        enabled: False shows nothing (another process of the run reports).
        every_seconds: the longest wait between two plain lines while the step advances.
        clock: seconds from any origin (tests pass a fake one).
        unit: what one unit is (``"comparisons"``): the bar then also shows the rate and the time left.
    """

    def __init__(self, console: Console, description: str, total: int | None = None, *, enabled: bool = True,
                 every_seconds: float = PLAIN_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 unit: str | None = None) -> None:
        self.console, self.description, self.total = console, description, total
        self.enabled, self.every_seconds, self.clock = enabled, every_seconds, clock
        self.bar = enabled and console.is_terminal
        self.unit = unit
        self._progress: Progress | None = None
        self._started = self._last_line = 0.0
        self._last_tenth = -1
        self._done = 0
        self._printed: tuple[int, int | None] | None = None

    def __enter__(self) -> StepProgress:
        self._started = self._last_line = self.clock()
        if self.bar:
            rate = [RateColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn()] if self.unit else [
                TimeElapsedColumn()]
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      *rate, console=self.console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        elif self.enabled:
            self._line()
        return self

    def update(self, done: int, total: int | None = None, description: str | None = None) -> None:
        """``done`` of ``total`` units; the total and the label may change (the next half of a step)."""
        relabel = description is not None and description != self.description
        self.description = description or self.description
        self.total = total if total is not None else self.total
        self._done = done
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=self.total, description=self.description)
        elif self.enabled and (relabel or self._tenth() > self._last_tenth
                               or self.clock() - self._last_line >= self.every_seconds):
            self._line()

    def _tenth(self) -> int:
        return 10 * self._done // self.total if self.total else -1

    def _line(self) -> None:
        self._last_line, self._last_tenth = self.clock(), self._tenth()
        self._printed = (self._done, self.total)
        of = f"/{self.total}" if self.total is not None else ""
        self.console.print(f"{self.description}: {self._done}{of} ({self._last_line - self._started:.0f} s)",
                           markup=False, highlight=False)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self.enabled and kind is None and self._printed != (self._done, self.total):
            self._line()


def quiet_library_bars(stream: object = None) -> bool:
    """Switch off the download and weight-loading bars of huggingface_hub and transformers when ``stream``
    (stderr by default, where they draw) is not a terminal; return whether they were switched off.

    Sets ``HF_HUB_DISABLE_PROGRESS_BARS`` and ``TQDM_DISABLE`` for libraries imported later (a user's own
    settings are kept) and tells those already imported.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"].strip().lower() not in ("1", "true", "yes", "on"):
        return False
    # Plain tqdm bars (transformers' GGUF conversion draws one on the first run) read TQDM_* defaults from the
    # environment when tqdm is imported: effective where tqdm is not loaded yet, as at the CLI's start.
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
    return True
