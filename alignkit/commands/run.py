"""`alignkit run`: recipe -> data -> model (+adapter) -> [SFT] -> preference training -> evaluation -> report.

The sequence is the shared run skeleton (:func:`alignkit.workflow.execute_run`); this module says what
preference training puts in it: the objective, the data, the stages and the reference.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from alignkit.data import PrepareContext, PreparedData, collate_preference, collate_sft, prepare_data
from alignkit.data.kway import collate_kway
from alignkit.data.pipeline import heldout_prompts
from alignkit.eval.heldout import evaluate_heldout
from alignkit.losses import build_objective
from alignkit.models.load import load_causal_lm, load_reward_model, load_tokenizer
from alignkit.models.reference import Reference
from alignkit.recipe import Recipe, recipe_to_yaml
from alignkit.train.trainer import Trainer
from alignkit.workflow import RunContext, RunSummary, execute_run
from alignkit.workflow.reference import evaluation_reference, reference_loader, training_reference

__all__ = ["PreferenceRun", "run_recipe"]


class PreferenceRun:
    """The :class:`~alignkit.workflow.RunPlan` of an offline recipe: [SFT], then the objective."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.name, self.seed, self.device = recipe.name, recipe.seed, recipe.train.device
        self.run_dir: Path = recipe.run_dir()
        self.adapter = recipe.adapter
        self.objective = build_objective(recipe.loss)
        self.is_reward_model = self.objective.inputs in ("scores", "kway")
        self.data: PreparedData | None = None
        self.reference: Reference | None = None

    def recipe_yaml(self) -> str:
        return recipe_to_yaml(self.recipe)

    def load(self, ctx: RunContext) -> tuple[Any, nn.Module]:
        tokenizer = load_tokenizer(self.recipe.model)
        if self.is_reward_model:
            return tokenizer, load_reward_model(self.recipe.model, ctx.device, pad_token_id=tokenizer.pad_token_id)
        return tokenizer, load_causal_lm(self.recipe.model, ctx.device)

    def prepare(self, ctx: RunContext) -> None:
        # Before the adapter: a source that generates its pairs samples from the initial model.
        context = PrepareContext(model=ctx.policy, seed=self.recipe.seed, console=ctx.console)
        self.data = data = prepare_data(self.recipe.data, ctx.tokenizer, context)
        ctx.console.print(f"data: {len(data.train)} train / {len(data.test)} held-out pairs\n{data.summary()}")
        ctx.report.update({"recipe": self.recipe.name, "objective": self.objective.describe(),
                           "train_pairs": len(data.train), "heldout_pairs": len(data.test)})

    def _trainer(self, ctx: RunContext, stage: str, **kwargs: Any) -> Trainer:
        recipe = self.recipe
        assert self.data is not None
        return Trainer(ctx.model, train_pairs=self.data.train, eval_pairs=self.data.test, run_dir=ctx.run_dir / stage,
                       stage=stage, device=ctx.device, env=ctx.env, chunk_size=recipe.model.logps_chunk_size,
                       padding_free=recipe.model.padding_free, console=ctx.console, **kwargs)

    def train(self, ctx: RunContext) -> None:
        recipe, data = self.recipe, self.data
        assert data is not None
        pad_id = ctx.tokenizer.pad_token_id
        if recipe.sft.enabled:
            sft = self._trainer(ctx, "sft", objective=build_objective({"name": "sft"}), cfg=recipe.sft,
                                collate=partial(collate_sft, pad_token_id=pad_id),
                                seed=recipe.sft.seed if recipe.sft.seed is not None else recipe.seed)
            ctx.results["sft"] = sft.fit(resume=ctx.resume)
        collate = partial(collate_kway if self.objective.inputs == "kway" else collate_preference, pad_token_id=pad_id)
        self.reference = training_reference(recipe, self.objective, ctx.model, data.train + data.test, collate,
                                            reference_loader(recipe, ctx.device, ctx.run_dir))
        trainer = self._trainer(ctx, "preference", objective=self.objective, cfg=recipe.train, collate=collate,
                                reference=self.reference,
                                seed=recipe.train.seed if recipe.train.seed is not None else recipe.seed)
        ctx.results["preference"] = trainer.fit(resume=ctx.resume)

    def evaluate(self, ctx: RunContext) -> dict[str, Any]:
        cfg = self.recipe.eval
        if cfg is None:
            return {}
        if self.is_reward_model:
            ctx.console.print("[yellow]eval: skipped, a reward model does not generate (the held-out accuracy "
                              "is above)[/]")
            return {}
        assert self.data is not None
        prompts, chosen = heldout_prompts(self.data.test_examples)
        reference = evaluation_reference(ctx.model, reference_loader(self.recipe, ctx.device, ctx.run_dir),
                                         self.reference)
        return evaluate_heldout(cfg, ctx.model, reference, ctx.tokenizer, prompts, chosen, run_dir=ctx.run_dir,
                                console=ctx.console, device=str(ctx.device))


def run_recipe(recipe: Recipe, *, resume: bool = False, console: Console | None = None) -> RunSummary:
    """Run every stage of ``recipe``; write the run folder; return what happened."""
    return execute_run(PreferenceRun(recipe), resume=resume, console=console)
