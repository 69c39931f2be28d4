"""Atomic, resumable checkpoints that are read without unpickling anything.

A checkpoint folder holds the trainable weights (``trainable.safetensors``), the optimizer, scheduler and
RNG states (``resume_state.json`` + ``resume_state.safetensors``, see :mod:`alignkit.train.tensor_tree`),
the trainer's own state (``trainer_state.json``) and any extra tensor files of the trainer (the online
trainer's KL anchor). It is written under a temporary name and renamed into place, and the ``latest``
pointer is replaced atomically afterwards, so a kill at any moment leaves either the previous checkpoint or
the new one, never half of one; :func:`remove_unfinished_saves` clears what such a kill leaves behind.

Nothing here calls ``torch.load``: a file planted in a run folder cannot run code on ``--resume``. An
``optimizer.pt`` of an older alignkit (a pickle) is never read; its weights still load.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.cache import atomic_folder, write_atomic
from alignkit.jsonio import RunFileError, read_json, to_json
from alignkit.train.divergence import non_finite_tensors
from alignkit.train.sharding import is_sharded, load_sharded_state
from alignkit.train.tensor_tree import load_tree, save_tree

__all__ = [
    "CheckpointError",
    "is_complete",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "remove_unfinished_saves",
    "save_checkpoint",
    "trainable_state",
    "write_atomic",
]

WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.json"
RESUME_JSON = "resume_state.json"
RESUME_TENSORS = "resume_state.safetensors"
LEGACY_OPTIM = "optimizer.pt"  # a pickle an earlier alignkit wrote; never read
STEP_PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read (non-finite weights, missing or foreign files)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (all of them for full fine-tuning, the adapter otherwise)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    state: dict[str, Any],
    pointer: str | None = "latest",
    files: Mapping[str, dict[str, torch.Tensor]] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``folder`` atomically; then update ``<parent>/<pointer>`` to name it.

    Args:
        folder: the checkpoint folder (replaced if it exists).
        model: its trainable parameters are saved.
        optimizer, scheduler: saved when given (a ``best`` checkpoint keeps neither).
        state: the trainer's own state, JSON-serialisable.
        pointer: the file in ``folder.parent`` that names the newest checkpoint; None leaves it alone.
        files: extra safetensors files to write into the folder, by file name.
        weights, optimizer_state: what to save instead of ``model``'s trainable weights and
            ``optimizer.state_dict()`` (a sharded model's, gathered: :mod:`alignkit.train.sharding`).

    Raises:
        CheckpointError: a trainable tensor holds a NaN or an infinity (nothing is written).
        DiskFullError: the device ran out of space (the previous checkpoint of that name is kept).
    """
    folder = Path(folder)
    weights = trainable_state(model) if weights is None else weights
    bad = non_finite_tensors(weights.items())
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {folder}: non-finite values in {bad[:3]}")
    # About what the folder takes (Adam-like optimizers keep two moments per weight), for a full disk's message.
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    extra_bytes = sum(t.numel() * t.element_size() for tensors in (files or {}).values() for t in tensors.values())
    needed = weight_bytes * (3 if optimizer is not None or optimizer_state is not None else 1) + extra_bytes
    with atomic_folder(folder, needed_bytes=needed) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        for name, tensors in (files or {}).items():
            save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / name))
        resume = {
            "optimizer": (optimizer_state if optimizer_state is not None
                          else optimizer.state_dict() if optimizer is not None else None),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
        }
        save_tree(resume, tmp / RESUME_JSON, tmp / RESUME_TENSORS)
        (tmp / STATE).write_text(to_json(state))
    if pointer:
        write_atomic(folder.parent / pointer, folder.name)
    return folder


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds the weights and a readable trainer state."""
    if not (folder / WEIGHTS).is_file():
        return False
    try:
        read_json(folder / STATE, what="a checkpoint's trainer state")
    except RunFileError:  # missing, unreadable, torn, not JSON or not an object
        return False
    return True


def _pointed(checkpoints: Path, pointer: str) -> Path | None:
    """The ``step-*`` folder the pointer file names, or None when it is missing, empty, garbled or names no
    such folder (``best`` included: it keeps no optimizer state, so training cannot resume from it)."""
    try:
        name = (checkpoints / pointer).read_text().strip()
    except (OSError, ValueError):
        return None
    if Path(name).name != name or not name.startswith(STEP_PREFIX) or _step_of(Path(name)) < 0:
        return None  # a bare step-NNN folder name, nothing else
    folder = checkpoints / name
    return folder if folder.is_dir() else None


def _step_of(folder: Path) -> int:
    suffix = folder.name[len(STEP_PREFIX):]
    return int(suffix) if suffix.isdigit() else -1


def latest_checkpoint(checkpoints: Path, pointer: str = "latest") -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names, else the newest complete ``step-*`` folder.

    A missing, empty or garbled pointer, or one naming an incomplete folder, falls back to the newest
    complete checkpoint (by step number); None when there is none.
    """
    named = _pointed(checkpoints, pointer)
    if named is not None and is_complete(named):
        return named
    steps = [p for p in checkpoints.glob(f"{STEP_PREFIX}*") if p.is_dir() and _step_of(p) >= 0 and is_complete(p)]
    return max(steps, key=_step_of) if steps else None


def load_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and, when given, optimizer, scheduler, RNG) from ``folder``; return the trainer state.

    Raises:
        CheckpointError: non-finite weights, weights the model lacks, or no resume state (e.g. an older
            alignkit's pickled ``optimizer.pt``, which is never unpickled) when one is needed, or no optimizer
            or scheduler state (the ``best`` checkpoint keeps neither) when ``optimizer`` or ``scheduler`` is
            given.
    """
    try:
        weights = load_file(str(folder / WEIGHTS))
    except Exception as err:  # noqa: BLE001 - a missing or garbled file
        raise CheckpointError(f"checkpoint {folder}: its weights cannot be read ({folder / WEIGHTS}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    bad = non_finite_tensors(weights.items())
    if bad:
        raise CheckpointError(f"checkpoint {folder} holds non-finite weights ({bad[:3]}): it comes from a "
                              "diverged run; delete it and train again with a lower learning rate")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise CheckpointError(f"checkpoint {folder} has weights the model lacks: {missing[:5]}")
    try:  # a crafted resume state (wrong keys, types or shapes) is named, not a traceback from torch
        _restore(folder, model, weights, params, optimizer, scheduler, restore_rng)
    except CheckpointError:
        raise
    except (RuntimeError, TypeError, KeyError, IndexError, ValueError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} or {RESUME_JSON} is not a state alignkit wrote "
                              f"({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return cast(dict[str, Any], read_json(folder / STATE, what="a checkpoint's trainer state"))


def _restore(folder: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor],
             params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer | None, scheduler: Any | None,
             restore_rng: bool) -> None:
    """Copy the checkpoint's weights, optimizer, scheduler and RNG state into place."""
    resume = _resume_state(folder) if optimizer is not None or scheduler is not None or restore_rng else {}
    for what, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is not None and resume[what] is None:  # e.g. the ``best`` checkpoint, which keeps weights only
            raise CheckpointError(f"checkpoint {folder} keeps no {what} state (only a step-* checkpoint "
                                  "does): training cannot resume from it")
    if is_sharded(model):  # the files hold full tensors, as a one-process run's: each process keeps its shard
        load_sharded_state(model, weights, optimizer, resume["optimizer"] if optimizer is not None else None)
    else:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        if optimizer is not None:
            optimizer.load_state_dict(resume["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(resume["scheduler"])
    if restore_rng:
        _set_rng_state(resume["rng"])


def _resume_state(folder: Path) -> dict[str, Any]:
    if (folder / RESUME_JSON).is_file() and (folder / RESUME_TENSORS).is_file():
        try:
            return load_tree(folder / RESUME_JSON, folder / RESUME_TENSORS)
        except Exception as err:  # noqa: BLE001 - safetensors and json raise several types
            why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"checkpoint {folder}: its resume state cannot be read ({folder / RESUME_JSON} "
                                  f"and {RESUME_TENSORS}: {why})") from None
    if (folder / LEGACY_OPTIM).exists():
        raise CheckpointError(
            f"checkpoint {folder} keeps its optimizer state as a pickle ({LEGACY_OPTIM}, written by an older "
            "alignkit), which is never loaded because unpickling can run code; its weights still load "
            "(alignkit eval), but training cannot resume from it: start the run again"
        )
    raise CheckpointError(f"checkpoint {folder} has no {RESUME_JSON} / {RESUME_TENSORS}: it cannot be resumed")


def prune_checkpoints(checkpoints: Path, keep: int, prefix: str = STEP_PREFIX) -> None:
    """Keep the ``keep`` newest ``step-*`` folders (the ``best`` folder is never pruned)."""
    steps = sorted(p for p in checkpoints.glob(f"{prefix}*") if p.is_dir())
    for old in steps[:-keep] if keep else steps:
        shutil.rmtree(old, ignore_errors=True)


def remove_unfinished_saves(checkpoints: Path) -> list[Path]:
    """Clear what a save killed halfway left in ``checkpoints``; returns the paths removed or restored.

    :func:`alignkit.cache.atomic_folder` writes ``.NAME.tmp-*`` and moves the folder it replaces to
    ``.NAME.old-*`` for a moment; :func:`~alignkit.cache.writing` writes ``.NAME.tmp-*``. A temporary is
    deleted; a moved-away previous version comes back when its ``NAME`` is missing (a kill between the two
    renames), else it is deleted.
    """
    touched: list[Path] = []
    if not checkpoints.is_dir():
        return touched
    for old in sorted(checkpoints.glob(".*.old-*")):
        target = checkpoints / old.name[1:].rsplit(".old-", 1)[0]
        if old.is_dir() and not target.exists() and is_complete(old):
            old.rename(target)
        else:
            _remove(old)
        touched.append(old)
    for tmp in sorted(checkpoints.glob(".*.tmp*")):
        _remove(tmp)
        touched.append(tmp)
    return touched


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
