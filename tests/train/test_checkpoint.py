"""Checkpoints: read without unpickling, bit-identical resume, and robust to what a killed run leaves behind."""

from __future__ import annotations

import json
import os
import pickle
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_fit, make_tiny_gpt2
from safetensors.torch import save_file
from train_data import tiny_pairs

from alignkit.data import collate_preference
from alignkit.losses import build_objective
from alignkit.models.reference import FrozenCopyReference
from alignkit.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    remove_unfinished_saves,
    save_checkpoint,
)
from alignkit.train.config import TrainConfig
from alignkit.train.tensor_tree import tree_from_json, tree_to_json
from alignkit.train.trainer import Trainer


def _trainer(run_dir: Path, tokenizer, **cfg) -> Trainer:
    model = make_tiny_gpt2()
    cfg = TrainConfig(**{"lr": 1e-3, "batch_size": 4, "max_steps": 4, "save_every": 1, "keep_checkpoints": 2,
                          "precision": "fp32", **cfg})  # resumed == uninterrupted, compared exactly
    return Trainer(model, build_objective({"name": "dpo", "beta": 0.5}), cfg, train_pairs=tiny_pairs(tokenizer, 8),
                   collate=partial(collate_preference, pad_token_id=tokenizer.pad_token_id), run_dir=run_dir,
                   reference=FrozenCopyReference(model), stage="preference")


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Planted:
    """A pickle that, once unpickled, would write a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


# -- the file format -------------------------------------------------------------------------------------
def test_tensor_tree_round_trip_keeps_types_and_bits():
    tree = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "groups": [{"betas": (0.9, 0.999), "params": [0, 1], "lr": float("inf"), "name": None}],
            "rng": {"python": random.getstate(), "numpy": np.random.get_state()}}
    skeleton, tensors = tree_to_json(tree)
    back = tree_from_json(json.loads(json.dumps(skeleton)), tensors)
    assert set(back["state"]) == {0} and torch.equal(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"])
    assert back["groups"][0]["betas"] == (0.9, 0.999) and back["groups"][0]["lr"] == float("inf")
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    with pytest.raises(TypeError, match="without pickling"):
        tree_to_json({"thing": object()})


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path, gpt2_tokenizer):
    _trainer(tmp_path, gpt2_tokenizer, max_steps=1).fit()
    folder = tmp_path / "checkpoints" / "step-0000001"
    assert sorted(p.name for p in folder.iterdir()) == [
        "resume_state.json", "resume_state.safetensors", "trainable.safetensors", "trainer_state.json"]


def test_resume_gives_bit_identical_weights(tmp_path, gpt2_tokenizer):
    full = _trainer(tmp_path / "full", gpt2_tokenizer)
    full.fit()
    cut = _trainer(tmp_path / "cut", gpt2_tokenizer)
    interrupt_fit(cut, at_step=2)
    resumed = _trainer(tmp_path / "cut", gpt2_tokenizer)
    resumed.fit(resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert _steps(tmp_path / "cut") == [1, 2, 3, 4]


# -- nothing is unpickled --------------------------------------------------------------------------------
def test_a_planted_pickle_never_runs(tmp_path, gpt2_tokenizer):
    """Before: ``--resume``, ``alignkit eval`` and the SFT reload ran ``torch.load(weights_only=False)`` on it."""
    _trainer(tmp_path, gpt2_tokenizer, max_steps=1).fit()
    folder = tmp_path / "checkpoints" / "step-0000001"
    marker = tmp_path / "marker"
    for name in ("resume_state.json", "resume_state.safetensors"):
        (folder / name).unlink()
    (folder / "optimizer.pt").write_bytes(pickle.dumps(_Planted(marker)))
    # The weights-only load of evaluation and of the SFT reference: fine, the pickle is not touched.
    load_checkpoint(folder, model=make_tiny_gpt2(), restore_rng=False)
    # A resume needs the optimizer state: refused with a message, the pickle is not opened.
    with pytest.raises(CheckpointError, match="optimizer.pt.*never loaded"):
        _trainer(tmp_path, gpt2_tokenizer, max_steps=2).fit(resume=True)
    # A pickle put where the resume state belongs is not a safetensors file: refused as unreadable.
    (folder / "resume_state.safetensors").write_bytes(pickle.dumps(_Planted(marker)))
    (folder / "resume_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _trainer(tmp_path, gpt2_tokenizer, max_steps=2).fit(resume=True)
    assert not marker.exists()


def test_non_finite_weights_are_never_written_nor_loaded(tmp_path):
    model = make_tiny_gpt2()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "step-0000001", model=model, optimizer=None, scheduler=None, state={"step": 1})
    assert not any(tmp_path.iterdir())
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, str(folder / "trainable.safetensors"))
    (folder / "trainer_state.json").write_text('{"step": 1}')
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(folder, model=make_tiny_gpt2(), restore_rng=False)


# -- what a killed run leaves behind ---------------------------------------------------------------------
@pytest.mark.parametrize("pointer", [b"", b"\xff\xfe\x00garbage", b"step-00", b"../../etc", b"step-9999999\n"])
def test_a_broken_latest_pointer_falls_back_to_the_newest_complete_checkpoint(tmp_path, gpt2_tokenizer, pointer):
    """Before: an empty pointer restarted from step 0, a garbled one crashed with UnicodeDecodeError."""
    _trainer(tmp_path, gpt2_tokenizer, max_steps=3).fit()
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "latest").write_bytes(pointer)
    assert latest_checkpoint(checkpoints) == checkpoints / "step-0000003"
    (checkpoints / "step-0000003" / "trainer_state.json").write_text('{"step": 3, "best')  # torn
    assert latest_checkpoint(checkpoints) == checkpoints / "step-0000002"
    result = _trainer(tmp_path, gpt2_tokenizer, max_steps=4).fit(resume=True)
    assert result.resumed_at == 2 and result.steps == 4
    assert _steps(tmp_path) == [1, 2, 3, 4]


def test_leftovers_of_a_killed_save_are_removed_on_the_next_start(tmp_path, gpt2_tokenizer):
    _trainer(tmp_path, gpt2_tokenizer, max_steps=2).fit()
    checkpoints = tmp_path / "checkpoints"
    torn = checkpoints / ".step-0000003.tmp-k1ll3d"
    torn.mkdir()
    (torn / "trainable.safetensors").write_bytes(b"half a file")
    (checkpoints / ".latest.tmp").write_text("step-00000")
    _trainer(tmp_path, gpt2_tokenizer, max_steps=3).fit(resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-0000002", "step-0000003"]


def test_a_folder_moved_aside_by_a_killed_save_comes_back(tmp_path, gpt2_tokenizer):
    _trainer(tmp_path, gpt2_tokenizer, max_steps=1).fit()
    checkpoints = tmp_path / "checkpoints"
    # Killed between atomic_folder's two renames: the previous version is aside, the new one not in place.
    os.rename(checkpoints / "step-0000001", checkpoints / ".step-0000001.old-abc")
    (checkpoints / ".step-0000001.tmp-def").mkdir()
    remove_unfinished_saves(checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-0000001"]
    assert latest_checkpoint(checkpoints) == checkpoints / "step-0000001"


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, gpt2_tokenizer):
    """Before: json.loads of the torn line raised JSONDecodeError and the run could not resume."""
    _trainer(tmp_path, gpt2_tokenizer, max_steps=2).fit()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "preference", "step": 3, "lo')
    _trainer(tmp_path, gpt2_tokenizer, max_steps=3).fit(resume=True)
    assert _steps(tmp_path) == [1, 2, 3]


def test_the_latest_pointer_never_names_best_and_best_cannot_be_resumed(tmp_path):
    """Before: ``latest`` naming ``best`` resumed from it, silently without optimizer and scheduler state."""
    model = make_tiny_gpt2()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints / "step-0000002", model=model, optimizer=optimizer, scheduler=None,
                    state={"step": 2})
    save_checkpoint(checkpoints / "best", model=model, optimizer=None, scheduler=None, state={"step": 1},
                    pointer=None)
    (checkpoints / "latest").write_text("best")
    assert latest_checkpoint(checkpoints) == checkpoints / "step-0000002"
    with pytest.raises(CheckpointError, match="keeps no optimizer state"):
        load_checkpoint(checkpoints / "best", model=model, optimizer=optimizer, restore_rng=False)
    assert load_checkpoint(checkpoints / "best", model=model, restore_rng=False) == {"step": 1}  # weights only
