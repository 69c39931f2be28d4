"""A progress bar for counted work (comparisons judged): count, rate and time left."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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

from alignkit.progress import ProgressFn

__all__ = ["RateColumn", "counting_progress"]


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``3.20 comparisons/s`` (``--`` before the first one is done)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"-- {self.unit}/s")


@contextmanager
def counting_progress(console: Console, description: str, unit: str) -> Iterator[ProgressFn]:
    """A bar with the count done, the rate and the time left; yields ``progress(done, total)`` to update it."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
