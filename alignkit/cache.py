"""Where alignkit keeps what it downloads or computes once, and how it writes files safely.

The cache: ``$ALIGNKIT_CACHE`` when set, else ``$XDG_CACHE_HOME/alignkit``, else ``~/.cache/alignkit``
(models, reference log-probs, generated data).

Writing inside a run folder without following a link out of it: a run folder may come from someone else
(it is data), so a file or folder in it may be a symbolic link planted to point elsewhere
(``preference/metrics.jsonl -> ~/notes.txt``). Every write into a run folder goes through :func:`writing`
(:func:`open_for_write` with a full device reported as a :class:`DiskFullError`), :func:`write_atomic` or
:func:`atomic_folder` (or :func:`check_inside` for what another library writes): the file itself is opened
without following a link (``O_NOFOLLOW``), and no folder between it and the run folder (the nearest folder
above holding :data:`RUN_MARKER`) may be a link either. A link is refused with an :class:`UnsafePathError` naming it; what it points to is never touched.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["RUN_MARKER", "DiskFullError", "UnsafePathError", "atomic_folder", "build_once", "cache_dir",
           "check_inside", "disk_full_error", "disk_full_guard", "is_disk_full", "open_for_write", "write_atomic", "writing"]

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


class DiskFullError(RuntimeError):
    """The device ran out of space while saving; the message names the folder and the space needed. What was
    there before is left as it was (saves go to a temporary sibling first)."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the device is full (or the quota or file size limit is reached)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    # safetensors' writer reports the OS error as text in its own exception type.
    return any(text in str(err) for text in ("No space left on device", "StorageFull", "os error 28"))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_full_error(folder: Path, what: str, needed_bytes: int | None) -> DiskFullError:
    """The one-line error for a save of ``what`` into ``folder`` that found the device full."""
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    needed = f"about {_size(needed_bytes)} needed" if needed_bytes else "more space needed"
    return DiskFullError(f"{folder}: no space left on the device while saving {what} ({needed}, {free}); nothing "
                         "was replaced: free some space and run again (a training run continues from its last "
                         "checkpoint with --resume)")


@contextmanager
def disk_full_guard(folder: Path, what: str, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a full device met inside the block into the one-line :class:`DiskFullError` for ``what``."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(folder, what, needed_bytes) from None
        raise


@contextmanager
def writing(path: str | Path, mode: str = "w", *, needed_bytes: int | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """:func:`open_for_write` for a ``with`` block that leaves ``path`` as it was when the block fails.

    A ``w``/``wb`` block writes a temporary sibling that replaces ``path`` in one rename when the block ends
    well: whatever stops it (a full device, an exception, Ctrl-C) leaves ``path`` absent if it was absent and
    with its old contents if it existed. An ``a``/``ab`` block that fails is cut back to the file's size before
    it (no torn line is left), or removed if the block created it. A full device is raised as a
    :class:`DiskFullError` naming the file instead of the bare ``OSError``.

    Args:
        path: the file (a link is refused, see :func:`check_inside`).
        mode: ``w``, ``a``, ``wb`` or ``ab``.
        needed_bytes: about how much the block writes, for the message.
        **kwargs: passed to ``open`` (``encoding``, ...).

    Raises:
        DiskFullError: the device ran out of space.
        UnsafePathError: ``path`` or a folder between it and its run folder is a symbolic link.
    """
    path = Path(path)
    if mode.startswith("a"):
        created = not os.path.lexists(path)
        with disk_full_guard(path.parent, path.name, needed_bytes):
            f = open_for_write(path, mode, **kwargs)
        start = os.fstat(f.fileno()).st_size
        target = path
    else:
        check_inside(path)
        with disk_full_guard(path.parent, path.name, needed_bytes):
            f, target = _temporary_sibling(path, mode, **kwargs)
    try:
        with f:
            yield f
    except BaseException as err:
        if target is path and created:
            path.unlink(missing_ok=True)
        elif target is path:
            # Closing flushed what it could before failing; cut the file back so no torn line is left.
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, start)
            finally:
                os.close(fd)
        else:
            target.unlink(missing_ok=True)  # before the free space is measured
        if isinstance(err, OSError) and is_disk_full(err):
            raise disk_full_error(path.parent, path.name, needed_bytes) from None
        raise
    if target is not path:
        try:
            os.replace(target, path)  # a link planted at ``path`` meanwhile is replaced, never followed
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def _temporary_sibling(path: Path, mode: str, **kwargs: Any) -> tuple[IO[Any], Path]:
    """A new hidden file next to ``path`` (never an existing one or a link), open for writing, and its path; it
    takes ``path``'s permissions when ``path`` exists."""
    try:
        permissions: int | None = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        permissions = None  # a new file: 0o644 less the umask, as open() makes it
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        break
    try:
        if permissions is not None:
            os.fchmod(fd, permissions)  # the replaced file's permissions, not narrowed by the umask
        return open(fd, mode, **kwargs), tmp
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


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
def atomic_folder(folder: str | Path, *, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``folder`` in one rename.

    A crash while writing leaves ``folder`` as it was (absent, or the previous complete version). An
    existing ``folder`` is renamed to a hidden sibling first and deleted only once the new one is in
    place, so no reader ever sees a half-written folder under the name.

    Args:
        folder: the folder to write.
        needed_bytes: about how much will be written, for the message when the device is full.

    Raises:
        DiskFullError: the device ran out of space (``folder`` is left as it was).
    """
    target = check_inside(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        try:
            yield tmp
        except Exception as err:
            if is_disk_full(err):
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space before the free space is measured
                raise disk_full_error(target.parent, target.name + "/", needed_bytes) from None
            raise
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


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace the file ``path`` with ``content`` (text as UTF-8) in one rename (readers see the old or the new
    file); a link at ``path`` (or above it in its run folder) is refused (:func:`~alignkit.safe_files.check_inside`).

    Raises:
        DiskFullError: the device ran out of space (``path`` is left as it was).
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    with writing(path, "wb", needed_bytes=len(data)) as f:
        f.write(data)
