"""Which model is the reference: found in the folder being evaluated, wherever it was moved; the SFT model of
an SFT run, with an adapter too, in training and evaluation alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from workflow_recipes import tiny_jsonl_recipe as _recipe

from alignkit.cli import main
from alignkit.models.load import load_causal_lm
from alignkit.peft import adapters_disabled, apply_adapter
from alignkit.recipe import Recipe, RecipeError, load_recipe
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint
from alignkit.workflow.environment import seed_everything
from alignkit.workflow.model_io import load_run_model
from alignkit.workflow.reference import base_loader, evaluation_base, evaluation_reference, reference_loader


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


# ---------------------------------------------------------------------------------------------------------
# An adapter with an SFT stage: the SFT stage trains the adapter, so the reference is the policy after SFT with
# its adapters on, in training (copy or cached) and in evaluation alike, never the base model with adapters off.

SFT = ["sft.enabled=true", "sft.max_steps=3", "sft.batch_size=4", "sft.grad_accum=1", "sft.lr=5e-2",
       "sft.warmup_steps=0", "sft.eval_every=null"]
LORA = "adapter={kind: lora, r: 4, alpha: 8.0}"


def _first_step(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "preference" / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("step") == 1 and "loss" in r)


@pytest.fixture(scope="module")
def adapter_sft_runs(tmp_path_factory) -> dict[str, Path]:
    """The same LoRA + SFT recipe trained with reference.mode copy and cached: {mode: run folder}."""
    tmp = tmp_path_factory.mktemp("adapter_sft")
    recipe_path = _recipe(tmp)
    runs = {}
    for mode in ("copy", "cached"):
        runs[mode] = tmp / f"run_{mode}"
        assert main(["run", str(recipe_path), *SFT, LORA, f"reference.mode={mode}", f"output_dir={runs[mode]}"]) == 0
    return runs


def _sft_model(recipe: Recipe, run_dir: Path) -> torch.nn.Module:
    """The SFT model built by hand: the initial model, the adapter, the SFT checkpoint's weights."""
    seed_everything(recipe.seed)
    model = apply_adapter(load_causal_lm(recipe.model, torch.device("cpu")), recipe.adapter)
    load_checkpoint(latest_checkpoint(run_dir / "sft" / "checkpoints"), model=model, restore_rng=False)
    return model.requires_grad_(False).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_copy_and_cached_references_of_an_adapter_sft_run_are_the_same_sft_model(adapter_sft_runs):
    copy, cached = (_first_step(adapter_sft_runs[m]) for m in ("copy", "cached"))
    # At the first step the policy is the SFT model, and so is the reference: DPO's implicit rewards are 0.
    for step in (copy, cached):
        assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
        assert step["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert cached["loss"] == pytest.approx(copy["loss"], abs=1e-6)


def test_the_evaluation_reference_of_an_adapter_sft_run_is_the_sft_model(adapter_sft_runs):
    run_dir = adapter_sft_runs["copy"]
    recipe = load_recipe(run_dir / "recipe.yaml")
    policy, _ = load_run_model(run_dir)
    sft = _sft_model(recipe, run_dir)
    with adapters_disabled(sft):
        base = _logits(sft)
    assert not torch.allclose(_logits(sft), base, atol=1e-4)  # SFT moved the model: the check can tell them apart
    loader = reference_loader(recipe, torch.device("cpu"), run_dir)
    torch.testing.assert_close(_logits(loader()), _logits(sft))  # the adapter is applied before the SFT weights
    with evaluation_reference(recipe, policy, loader)() as reference:
        torch.testing.assert_close(_logits(reference), _logits(sft))


def test_alignkit_eval_of_an_adapter_sft_run_uses_the_sft_model_as_reference(adapter_sft_runs, monkeypatch):
    run_dir = adapter_sft_runs["copy"]
    expected = _logits(_sft_model(load_recipe(run_dir / "recipe.yaml"), run_dir))
    seen: list[torch.Tensor] = []

    def evaluate(cfg, policy, reference, *args, **kwargs):
        with reference() as model:
            seen.append(_logits(model))
        return {}

    monkeypatch.setattr("alignkit.commands.eval.evaluate_heldout", evaluate)
    assert main(["eval", str(run_dir), "eval={reward: vader_sentiment, num_prompts: 2}"]) == 0
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected)


def test_the_base_baseline_is_the_untuned_model_not_the_sft_reference(adapter_sft_runs, tmp_path):
    run_dir = adapter_sft_runs["copy"]
    recipe = load_recipe(run_dir / "recipe.yaml")
    policy, _ = load_run_model(run_dir)
    seed_everything(recipe.seed)
    untuned = _logits(load_causal_lm(recipe.model, torch.device("cpu")).eval())
    reference = evaluation_reference(recipe, policy, reference_loader(recipe, torch.device("cpu"), run_dir))
    base = evaluation_base(recipe, policy, reference, base_loader(recipe, torch.device("cpu")))
    with base() as model:  # an adapter was all training changed: the policy with its adapter off
        torch.testing.assert_close(_logits(model), untuned)
    with reference() as model:
        assert not torch.allclose(_logits(model), untuned, atol=1e-4)  # the SFT model
    assert not torch.allclose(_logits(policy), untuned, atol=1e-4)  # the adapter is back on afterwards
    # A fully fine-tuned policy (no adapter): the untuned model is loaded again, re-seeded.
    tuned = load_causal_lm(recipe.model, torch.device("cpu"))
    full = evaluation_base(recipe, tuned, reference, base_loader(recipe, torch.device("cpu")))
    with full() as model:
        assert model is not tuned
        torch.testing.assert_close(_logits(model), untuned)
    # Without SFT (and no named reference) the reference is the untuned model: the very same callable.
    no_sft = recipe.model_copy(update={"sft": recipe.sft.model_copy(update={"enabled": False})})
    assert evaluation_base(no_sft, policy, reference, base_loader(no_sft, torch.device("cpu"))) is reference
