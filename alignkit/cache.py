"""Where alignkit keeps what it downloads or computes once (models, reference log-probs, generated data).

``$ALIGNKIT_CACHE`` when set, else ``$XDG_CACHE_HOME/alignkit``, else ``~/.cache/alignkit``.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DiskFullError", "atomic_folder", "build_once", "cache_dir", "disk_full_error", "write_atomic"]


class DiskFullError(RuntimeError):
    """The device ran out of space while saving; the message names the folder and the space needed. What was
    there before is left as it was (saves go to a temporary sibling first)."""


def _is_disk_full(err: BaseException) -> bool:
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
                         "was replaced: free some space and run again (--resume continues from the last checkpoint)")


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
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        try:
            yield tmp
        except Exception as err:
            if _is_disk_full(err):
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


def write_atomic(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` in one rename (readers see the old or the new file).

    Raises:
        DiskFullError: the device ran out of space (``path`` is left as it was).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
    except OSError as err:
        if _is_disk_full(err):
            tmp.unlink(missing_ok=True)
            raise disk_full_error(path.parent, path.name, len(text.encode("utf-8"))) from None
        raise
    os.replace(tmp, path)
