"""Writes inside a run folder never follow a symbolic link out of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.cache import (
    RUN_MARKER,
    UnsafePathError,
    atomic_folder,
    check_inside,
    open_for_write,
    write_atomic,
)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    (folder / "preference").mkdir(parents=True)
    (folder / RUN_MARKER).write_text("")
    return folder


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    return path


@pytest.mark.parametrize("write", [
    lambda p: open_for_write(p, "a").close(),
    lambda p: open_for_write(p, "w").close(),
    lambda p: open_for_write(p, "wb").close(),
    lambda p: write_atomic(p, "x"),
], ids=["append", "write", "binary", "atomic"])
def test_a_planted_file_link_is_refused_and_its_target_untouched(run, notes, write):
    link = run / "preference" / "metrics.jsonl"
    link.symlink_to(notes)
    with pytest.raises(UnsafePathError, match=r"metrics.jsonl: it is a symbolic link \(to .*notes.txt\)"):
        write(link)
    assert notes.read_text() == "my notes\n" and link.is_symlink()


def test_a_planted_folder_link_is_refused_below_the_run_folder_only(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "plots").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match=r"plots is a symbolic link"):
        open_for_write(run / "plots" / "reward_kl.png", "wb")
    with pytest.raises(UnsafePathError, match=r"plots is a symbolic link"), atomic_folder(run / "plots" / "model"):
        pass
    assert list(elsewhere.iterdir()) == []
    # The run folder itself may be a link (output_dir on another disk): what lies inside it is written.
    alias = tmp_path / "alias"
    alias.symlink_to(run)
    with open_for_write(alias / "preference" / "metrics.jsonl", "a") as f:
        f.write("{}\n")
    assert (run / "preference" / "metrics.jsonl").read_text() == "{}\n"
    assert check_inside(alias / "report.json") == alias / "report.json"


def test_a_leftover_temporary_link_is_not_written_through(run, notes):
    (run / ".report.json.tmp").symlink_to(notes)
    write_atomic(run / "report.json", "{}")
    assert (run / "report.json").read_text() == "{}" and notes.read_text() == "my notes\n"
    assert list(run.glob(".report.json.tmp-*")) == []  # its own temporary is renamed into place


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["w", "wb", "a"])
@pytest.mark.parametrize("existed", [False, True], ids=["absent", "existing"])
def test_a_write_that_fails_midway_leaves_the_file_as_it_was(run, mode, existed):
    """Whatever stops a block (here an exception after part of the file is written and flushed), the file is
    afterwards exactly as it was before: absent, or its old contents."""
    from alignkit.cache import writing

    path = run / "comparison.md"
    if existed:
        path.write_bytes(b"old\n")
        path.chmod(0o600)
    with pytest.raises(_Stop), writing(path, mode) as f:
        f.write(b"new, part 1\n" if "b" in mode else "new, part 1\n")
        f.flush()
        raise _Stop
    if existed:
        assert path.read_bytes() == b"old\n" and path.stat().st_mode & 0o777 == 0o600
    else:
        assert not path.exists()
    assert sorted(p.name for p in run.iterdir()) == sorted([RUN_MARKER, "preference"] + ["comparison.md"] * existed)


def test_a_rewrite_that_ends_well_replaces_the_file_and_keeps_its_permissions(run):
    from alignkit.cache import writing

    path = run / "comparison.md"
    path.write_text("old\n")
    path.chmod(0o640)
    with writing(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in run.iterdir()) == sorted([RUN_MARKER, "preference", "comparison.md"])
