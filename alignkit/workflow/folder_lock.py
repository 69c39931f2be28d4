"""One run at a time in a run folder: a lock file, held with ``flock`` while the run (or ``eval``) writes.

The file records who holds it (pid, host, start time) for the message a second run gets. The lock is the
kernel's, so it ends with the process however that ends: a lock file left by a killed run is not held, and
the next run takes it over (and says so).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from alignkit.cache import disk_full_guard
from alignkit.jsonio import RunFileError, parse_json, to_json
from alignkit.recipe import RecipeError

__all__ = ["LOCK_FILE", "RunFolderBusy", "run_folder_lock"]

LOCK_FILE = ".alignkit-lock"


class RunFolderBusy(RecipeError):
    """Another process holds the run folder's lock."""


def _holder(fd: int) -> str:
    """Who the lock file says holds it, as ``pid N on HOST since TIME`` (or what could be read)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw:
        return "a process that left no record"
    try:
        info = parse_json(raw, LOCK_FILE, "a lock record")
        pid, host, since = info["pid"], info["host"], info["since"]
    except (RunFileError, KeyError, TypeError):
        return "an unreadable record"
    if not (isinstance(pid, int) and not isinstance(pid, bool) and isinstance(host, str) and isinstance(since, str)):
        return "an unreadable record"
    return f"pid {pid} on {host[:100]} since {since[:40]}"


def _open_locked(path: Path, run_dir: Path) -> int:
    """A descriptor of the lock file, locked; the file is the one at ``path`` now (not one its last holder
    removed between our open and our lock)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"{run_dir} is in use by another run ({holder}); wait for it to end, or choose "
                                "another output_dir") from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def run_folder_lock(run_dir: Path, console: Console | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (the folder is created for it, and removed again if the block
    leaves it empty).

    Raises:
        RunFolderBusy: another process holds it; the message names that process.
    """
    created = not run_dir.exists()
    with disk_full_guard(run_dir.parent, run_dir.name + "/"):
        run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:
        with disk_full_guard(run_dir, LOCK_FILE):
            fd = _open_locked(path, run_dir)
    except BaseException:
        if created:
            _remove_if_empty(run_dir)
        raise
    try:
        if os.fstat(fd).st_size and console is not None:
            console.print(f"[yellow]note[/]: {run_dir}: taking over the lock of a run that stopped without "
                          f"releasing it ({_holder(fd)})")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        with disk_full_guard(run_dir, LOCK_FILE):
            os.pwrite(fd, to_json(record, indent=None).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            _remove_if_empty(run_dir)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: the run wrote something
