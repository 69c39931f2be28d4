"""Where alignkit keeps what it downloads or computes once, and how it writes files safely.

The cache: ``$ALIGNKIT_CACHE`` when set, else ``$XDG_CACHE_HOME/alignkit``, else ``~/.cache/alignkit``
(models, reference log-probs, generated data).

Writing inside a run folder without following a link out of it: a run folder may come from someone else
(it is data), so a file or folder in it may be a symbolic link planted to point elsewhere
(``preference/metrics.jsonl -> ~/notes.txt``). Every write into a run folder goes through
:func:`open_for_write`, :func:`write_atomic` or :func:`atomic_folder` (or :func:`check_inside` for what
another library writes): the file itself is opened without following a link (``O_NOFOLLOW``), and no
folder between it and the run folder (the nearest folder above holding :data:`RUN_MARKER`) may be a link
either. A link is refused with an :class:`UnsafePathError` naming it; what it points to is never touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["RUN_MARKER", "UnsafePathError", "atomic_folder", "build_once", "cache_dir", "check_inside",
           "open_for_write", "write_atomic"]

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


def cache_dir(*parts: str) -> Path:
    """The cache folder (created), or a sub-folder of it."""
    root = os.environ.get("ALIGNKIT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "alignkit")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Make the folder ``target`` by calling ``build(tmp)`` on a temporary sibling, then renaming it.

    A crash halfway leaves no half-written ``target``; a finished one is never rebuilt.
    """
    if not target.exists():
        with atomic_folder(target) as tmp:
            build(tmp)
    return target


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``folder`` in one rename.

    A crash while writing leaves ``folder`` as it was (absent, or the previous complete version). An
    existing ``folder`` is renamed to a hidden sibling first and deleted only once the new one is in
    place, so no reader ever sees a half-written folder under the name.
    """
    target = check_inside(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` in one rename (readers see the old or the new file); a link at
    ``path`` (or above it in its run folder) is refused (:func:`~alignkit.safe_files.check_inside`)."""
    check_inside(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover (or a planted link) is removed, never written through
    with open_for_write(tmp) as f:
        f.write(text)
    os.replace(tmp, path)
