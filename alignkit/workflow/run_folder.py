"""A run folder is a result: never overwritten, mixed with another run, or resumed under another recipe.

:func:`inspect_run_folder` says what a folder holds compared with the recipe about to run;
:func:`claim_run_folder` decides, from that and the user's ``--resume`` / ``--overwrite``, whether the run
starts, resumes, or stops before anything is written.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from alignkit.cache import RUN_MARKER  # written first into every folder a run claims
from alignkit.recipe import RecipeError, comparable_recipes
from alignkit.workflow.folder_lock import LOCK_FILE

__all__ = ["RUN_MARKER", "Action", "FolderState", "claim_run_folder", "clear_run_folder", "inspect_run_folder", "recipe_differences"]


State = Literal["new", "finished", "interrupted", "different", "foreign"]


@dataclass(frozen=True)
class FolderState:
    """What a run folder holds.

    Attributes:
        state: ``new`` (missing or empty), ``finished`` (same recipe, report written), ``interrupted`` (same
            recipe, no report), ``different`` (another recipe), ``foreign`` (files that are not a run).
        differences: the first differences between the saved recipe and the current one (``different``).
        has_results: whether the folder holds anything but its marker and ``recipe.yaml`` (a run that
            stopped at start left only those: starting over loses nothing).
    """

    state: State
    differences: str = ""
    has_results: bool = False


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def recipe_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """``path: old -> new`` for the first ``limit`` dotted paths where two plain recipe dicts differ."""
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def inspect_run_folder(run_dir: Path, current: BaseModel, schema: type[BaseModel],
                       dump: Callable[[Any], str]) -> FolderState:
    """Compare the folder's saved ``recipe.yaml`` (read through ``schema``, importing no plugin, then
    ``dump``) with ``current``. Only a folder with the :data:`RUN_MARKER` file is a run: a user's own folder
    that happens to hold a ``recipe.yaml`` is ``foreign``, never replaced."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"output_dir: {run_dir} is a file, not a folder")
    if not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return FolderState("new")
    saved = run_dir / "recipe.yaml"
    if not (run_dir / RUN_MARKER).is_file() or not saved.is_file():
        return FolderState("foreign")
    has_results = any(p.name not in ("recipe.yaml", RUN_MARKER, LOCK_FILE) for p in run_dir.iterdir())
    old, new = comparable_recipes(saved, current, schema, dump)
    if old != new:
        return FolderState("different", recipe_differences(old, new), has_results)
    return FolderState("finished" if (run_dir / "report.json").is_file() else "interrupted", "", has_results)


Action = Literal["start", "replace", "resume", "finished"]


def claim_run_folder(run_dir: Path, folder: FolderState, *, resume: bool, overwrite: bool) -> Action:
    """What to do with ``run_dir``; raises before anything is written when the answer is "nothing".

    Returns:
        ``start`` (a new run in an empty folder), ``replace`` (``overwrite``: clear the folder with
        :func:`clear_run_folder`, then start), ``resume``, or ``finished`` (``--resume`` of a finished run:
        nothing to do, nothing changed).

    Raises:
        RecipeError: resuming what is not there or under another recipe, or writing over a run (or over
            files that are not a run) without ``overwrite``.
    """
    if resume and overwrite:
        raise RecipeError("--resume and --overwrite contradict each other: choose one")
    if folder.state == "foreign":
        raise RecipeError(f"output_dir: {run_dir} holds files that are not an alignkit run (no "
                          f"{RUN_MARKER} file); "
                          "choose another output_dir")
    if resume:
        if folder.state == "new":
            raise RecipeError(f"--resume: {run_dir} holds no run to resume (start it without --resume)")
        if folder.state == "different":
            raise RecipeError(f"--resume: the recipe differs from the one {run_dir} was started with: "
                              f"{folder.differences}. Resume with the same recipe and overrides, or start a new "
                              "run in another output_dir (or --overwrite it)")
        return "finished" if folder.state == "finished" else "resume"
    if folder.state == "new" or not folder.has_results:
        return "start"
    if not overwrite:
        what = {"finished": "a finished run", "interrupted": "an interrupted run of this recipe",
                "different": f"a run of another recipe ({folder.differences})"}[folder.state]
        hint = "--resume to continue it, " if folder.state == "interrupted" else ""
        raise RecipeError(f"{run_dir} holds {what}; use {hint}--overwrite to replace it, or another output_dir")
    return "replace"


def clear_run_folder(run_dir: Path) -> None:
    """Empty a run folder that ``overwrite`` replaces (its run is gone; a new one starts clean). The lock
    file the new run holds stays."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
