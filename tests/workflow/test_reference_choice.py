"""The reference of a finished run is found in the folder being evaluated, wherever it was moved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from workflow_recipes import tiny_jsonl_recipe as _recipe

from alignkit.cli import main
from alignkit.recipe import RecipeError, load_recipe
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint
from alignkit.workflow.reference import reference_loader


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_moved_run_evaluates_against_its_own_sft_model(tmp_path: Path) -> None:
    recipe_path = _recipe(tmp_path)
    overrides = ["sft.enabled=true", "sft.max_steps=2", "sft.batch_size=4", "sft.grad_accum=1", "sft.lr=1e-2",
                 "sft.warmup_steps=0", "sft.eval_every=null"]
    assert main(["run", str(recipe_path), *overrides]) == 0
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "run", moved)  # the recipe still names tmp_path / "run", which is gone
    recipe = load_recipe(moved / "recipe.yaml")

    reference = reference_loader(recipe, torch.device("cpu"), moved)()
    sft = reference_loader(recipe.model_copy(update={"sft": recipe.sft.model_copy(update={"enabled": False})}),
                           torch.device("cpu"), moved)()  # the untuned initial model, for contrast
    load_checkpoint(latest_checkpoint(moved / "sft" / "checkpoints"), model=sft, restore_rng=False)
    assert all(torch.equal(a, b) for a, b in zip(_params(reference).values(), _params(sft).values(), strict=True))

    shutil.rmtree(moved / "sft")  # no SFT checkpoint: refuse rather than use the untuned model
    with pytest.raises(RecipeError, match="no SFT checkpoint"):
        reference_loader(recipe, torch.device("cpu"), moved)()
