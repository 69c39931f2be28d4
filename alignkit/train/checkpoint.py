"""Atomic, resumable checkpoints.

A checkpoint folder holds the trainable weights (safetensors), the optimizer and scheduler state, the RNG
states and the trainer's own state. It is written under a temporary name and renamed into place, and the
``latest`` pointer is replaced atomically afterwards, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignkit.cache import atomic_folder, write_atomic

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "trainable_state",
    "write_atomic",
]

WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.json"
OPTIM = "optimizer.pt"


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
) -> Path:
    """Write a checkpoint to ``folder`` atomically; update ``<parent>/<pointer>`` to name it."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": _rng_state(),
            },
            tmp / OPTIM,
        )
        (tmp / STATE).write_text(json.dumps(state, indent=2))
    if pointer:
        write_atomic(folder.parent / pointer, folder.name)
    return folder


def latest_checkpoint(checkpoints: Path, pointer: str = "latest") -> Path | None:
    ref = checkpoints / pointer
    if not ref.is_file():
        return None
    folder = checkpoints / ref.read_text().strip()
    return folder if (folder / STATE).is_file() else None


def load_checkpoint(
    folder: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and, when given, optimizer, scheduler, RNG) from ``folder``; return the trainer state."""
    weights = load_file(str(folder / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {folder} has weights the model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    extra = torch.load(folder / OPTIM, map_location="cpu", weights_only=False)
    if optimizer is not None and extra["optimizer"] is not None:
        optimizer.load_state_dict(extra["optimizer"])
    if scheduler is not None and extra["scheduler"] is not None:
        scheduler.load_state_dict(extra["scheduler"])
    if restore_rng:
        _set_rng_state(extra["rng"])
    return json.loads((folder / STATE).read_text())


def prune_checkpoints(checkpoints: Path, keep: int, prefix: str = "step-") -> None:
    """Keep the ``keep`` newest ``step-*`` folders (the ``best`` folder is never pruned)."""
    steps = sorted(p for p in checkpoints.glob(f"{prefix}*") if p.is_dir())
    for old in steps[:-keep] if keep else steps:
        shutil.rmtree(old, ignore_errors=True)
