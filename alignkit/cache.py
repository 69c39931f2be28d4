"""Where alignkit keeps what it downloads or computes once (models, reference log-probs, generated data).

``$ALIGNKIT_CACHE`` when set, else ``$XDG_CACHE_HOME/alignkit``, else ``~/.cache/alignkit``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alignkit.safe_files import check_inside, open_for_write

__all__ = ["atomic_folder", "build_once", "cache_dir", "write_atomic"]


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
