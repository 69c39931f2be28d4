"""Writing inside a run folder without following a link out of it.

A run folder may come from someone else (it is data), so a file or folder in it may be a symbolic link
planted to point elsewhere (``preference/metrics.jsonl -> ~/notes.txt``). Every write into a run folder
goes through :func:`open_for_write` (or :func:`check_inside` for what another library writes, in a folder
this one made): the file itself is opened without following a link (``O_NOFOLLOW``), and no folder between
it and the run folder (the nearest folder above holding :data:`RUN_MARKER`) may be a link either. A link is
refused with an :class:`UnsafePathError` naming it; what it points to is never touched.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any

__all__ = ["RUN_MARKER", "UnsafePathError", "check_inside", "open_for_write"]

# Written first into every folder a run claims (see alignkit.workflow.run_folder).
RUN_MARKER = ".alignkit-run"


class UnsafePathError(ValueError):
    """A write that a symbolic link would lead out of its run folder; nothing was written."""


def _refuse(path: Path, link: Path) -> UnsafePathError:
    try:
        target = f" (to {os.readlink(link)})"
    except OSError:
        target = ""
    what = "it is" if link == path else f"{link} is"
    return UnsafePathError(f"refusing to write {path}: {what} a symbolic link{target}; a run folder's files are "
                           "written only inside it. Remove the link (or choose another output_dir)")


def _run_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` that holds a run marker, or None."""
    for parent in path.parents:
        if (parent / RUN_MARKER).is_file():
            return parent
    return None


def check_inside(path: str | Path) -> Path:
    """Refuse ``path`` when it, or a folder between it and its run folder, is a symbolic link.

    Outside a run folder (no marker above it) only ``path`` itself is checked. Returns ``path``.

    Raises:
        UnsafePathError: naming the link.
    """
    path = Path(path)
    if path.is_symlink():
        raise _refuse(path, path)
    root = _run_root(path)
    if root is not None:
        for folder in path.parents:
            if folder == root:
                break
            if folder.is_symlink():
                raise _refuse(path, folder)
    return path


def open_for_write(path: str | Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a``, ``wb``, ``ab``), refusing links (see :func:`check_inside`).

    Raises:
        UnsafePathError: ``path`` or a folder between it and its run folder is a symbolic link.
    """
    path = check_inside(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:  # made a link since the check
            raise _refuse(path, path) from None
        raise
    return open(fd, mode, **kwargs)
