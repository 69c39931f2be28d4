"""`alignkit run`: recipe -> data -> model (+adapter) -> [SFT] -> preference training -> evaluation -> report.

The sequence is the shared run skeleton (:func:`alignkit.workflow.execute_run`); this module says what
preference training puts in it: the objective, the data, the stages and the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from rich.console import Console

from alignkit.commands.online import run_online_recipe
from alignkit.data import (
    SOURCES,
    PrepareContext,
    PreparedData,
    collate_sft,
    label_counts,
    prepare_data,
)
from alignkit.data.pipeline import heldout_prompts
from alignkit.data.truncation import truncation_counts
from alignkit.eval.agreement import labelled_pairs
from alignkit.eval.curve import curve_evaluator, curve_points
from alignkit.eval.heldout import evaluate_heldout
from alignkit.jsonio import read_jsonl
from alignkit.losses import build_objective
from alignkit.models.load import load_reward_model, load_tokenizer
from alignkit.models.reference import Reference
from alignkit.recipe import Recipe, RecipeFile, load_recipe, recipe_to_yaml
from alignkit.recipe.online import is_online_recipe, load_online_recipe
from alignkit.recipe.rules import unused_reference_note
from alignkit.train.dropout import disable_dropout
from alignkit.train.loop import CurveEvaluation
from alignkit.train.trainer import Trainer
from alignkit.workflow import RecipeRun, RunContext, RunSummary, execute_run
from alignkit.workflow.reference import (
    base_loader,
    evaluation_base,
    evaluation_reference,
    reference_loader,
    training_reference,
)

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel

__all__ = ["PreferenceRun", "run_recipe", "run_recipe_file"]


class PreferenceRun(RecipeRun):
    """The :class:`~alignkit.workflow.RunPlan` of an offline recipe: [SFT], then the objective."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe, Recipe, recipe_to_yaml)
        self.recipe: Recipe = recipe
        self.objective = recipe.objective()  # built once, by validation
        self.is_reward_model = self.objective.inputs.reward_model
        self.data: PreparedData | None = None
        self.reference: Reference | None = None

    def preflight(self) -> None:
        if not self.is_reward_model:  # a reward model is not evaluated (it does not generate): no judge runs
            super().preflight()

    def load(self, ctx: RunContext) -> tuple[Any, PreTrainedModel]:
        tokenizer = load_tokenizer(self.recipe.model)
        if not self.is_reward_model:
            return tokenizer, self.load_causal_lm(ctx.device)
        model = load_reward_model(self.recipe.model, ctx.device, pad_token_id=tokenizer.pad_token_id)
        if self.recipe.model.disable_dropout:
            disable_dropout(model)
        return tokenizer, model

    def prepare(self, ctx: RunContext) -> None:
        # Before the adapter: a source that generates its pairs samples from the initial model. A reward model
        # cannot sample, so its generated pairs come from the causal LM of the same weights (the SFT model of
        # the SFT -> reward model -> PPO pipeline), loaded for this and then freed.
        sampler = ctx.policy
        if self.is_reward_model and SOURCES.get(self.recipe.data.source.kind).needs_model:
            sampler = self.load_causal_lm(ctx.device)
        split = self.recipe.data.unpaired  # None: split pairs when the objective reads a kind made by splitting
        unpaired = split if split is not None else self.objective.inputs.split_from is not None
        context = PrepareContext(model=sampler, seed=self.recipe.seed, console=ctx.console, unpaired=unpaired)
        self.data = data = prepare_data(self.recipe.data, ctx.tokenizer, context)
        del sampler, context
        ctx.console.print(f"data: {len(data.train)} train / {len(data.test)} held-out pairs\n{data.summary()}")
        if self.objective.inputs.labelled:
            self._report_labels(ctx, data)
        ctx.report.update({"recipe": self.recipe.name, "objective": self.objective.describe(),
                           "train_pairs": len(data.train), "heldout_pairs": len(data.test),
                           "truncation": {"prompt_truncation": self.recipe.data.prompt_truncation,
                                          "train": truncation_counts(data.train_report),
                                          "heldout": truncation_counts(data.test_report)}})

    def _report_labels(self, ctx: RunContext, data: PreparedData) -> None:
        """Label counts of unpaired data, and the objective's warnings about them (KTO's weights)."""
        (desirable, undesirable), (test_desirable, test_undesirable) = label_counts(data.train), label_counts(data.test)
        ctx.console.print(f"data: train {desirable} desirable / {undesirable} undesirable, held-out "
                          f"{test_desirable} / {test_undesirable}")
        ctx.report["labels"] = {"train": {"desirable": desirable, "undesirable": undesirable},
                                "heldout": {"desirable": test_desirable, "undesirable": test_undesirable}}
        for warning in self.objective.label_balance_warnings(desirable, undesirable):
            ctx.console.print(f"[yellow]warning[/]: {warning}")

    def _trainer(self, ctx: RunContext, stage: str, **kwargs: Any) -> Trainer:
        recipe = self.recipe
        assert self.data is not None
        return Trainer(ctx.model, train_pairs=self.data.train, eval_pairs=self.data.test, run_dir=ctx.run_dir / stage,
                       stage=stage, device=ctx.device, env=ctx.env, logps=recipe.model.logps, console=ctx.console,
                       **kwargs)

    def train(self, ctx: RunContext) -> None:
        recipe, data = self.recipe, self.data
        assert data is not None
        pad_id = ctx.tokenizer.pad_token_id
        if recipe.sft.enabled:
            sft = self._trainer(ctx, "sft", objective=build_objective({"name": "sft"}), cfg=recipe.sft,
                                collate=partial(collate_sft, pad_token_id=pad_id),
                                seed=recipe.sft.seed if recipe.sft.seed is not None else recipe.seed)
            ctx.results["sft"] = sft.fit(resume=ctx.resume)
        # Reference log-probs are of both halves of a batch of the objective's kind (chosen and rejected, or an
        # unpaired batch's completions and mismatched pairs); no reward-model kind reads a reference.
        collate = partial(self.objective.inputs.collate, pad_token_id=pad_id)
        if (note := unused_reference_note(recipe)) is not None:
            ctx.console.print(f"[yellow]note[/]: {note}")
        self.reference = training_reference(recipe, self.objective, ctx.model, data.train + data.test,
                                            collate, reference_loader(recipe, ctx.device, ctx.run_dir),
                                            ctx.sharding)
        trainer = self._trainer(ctx, "preference", objective=self.objective, cfg=recipe.train, collate=collate,
                                reference=self.reference, curve=self._curve(ctx),
                                seed=recipe.train.seed if recipe.train.seed is not None else recipe.seed)
        ctx.results["preference"] = trainer.fit(resume=ctx.resume)

    def _curve(self, ctx: RunContext) -> CurveEvaluation | None:
        """Reward and KL every ``eval.every`` steps (one process; a reward model does not generate)."""
        cfg = self.recipe.eval
        if cfg is None or cfg.every is None or self.is_reward_model:
            return None
        if ctx.env.world_size > 1 or ctx.sharding is not None:
            ctx.console.print("[yellow]note[/]: eval.every is skipped with several processes; the final "
                              "evaluation runs as usual")
            return None
        assert self.data is not None
        prompts, _ = heldout_prompts(self.data.test_examples)
        reference = evaluation_reference(self.recipe, ctx.model, reference_loader(self.recipe, ctx.device, ctx.run_dir),
                                         self.reference)
        return CurveEvaluation(curve_evaluator(cfg, ctx.model, reference, ctx.tokenizer, prompts), cfg.every)

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
        # A sharded frozen copy is no use to the main process alone: the reference is loaded again there.
        training = self.reference if ctx.sharding is None else None
        reference = evaluation_reference(self.recipe, ctx.model,
                                         reference_loader(self.recipe, ctx.device, ctx.run_dir), training)
        base = evaluation_base(self.recipe, ctx.model, reference, base_loader(self.recipe, ctx.device))
        out = evaluate_heldout(cfg, ctx.model, reference, ctx.tokenizer, prompts, chosen, run_dir=ctx.run_dir,
                               console=ctx.console, device=str(ctx.device), base=base,
                               labelled=labelled_pairs(self.data.test_examples))
        if cfg.every is not None and "reward_kl" in out and "preference" in ctx.results:
            out["reward_kl_curve"] = curve_points(
                read_jsonl(ctx.run_dir / "preference" / "metrics.jsonl", what="a metrics record"),
                out["reward_kl"]["after"], ctx.results["preference"].summary().steps)
        return out


def run_recipe(recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
               console: Console | None = None) -> RunSummary:
    """Run every stage of ``recipe``; write the run folder; return what happened.

    ``resume`` continues an interrupted run of the same recipe; ``overwrite`` replaces the run its folder
    holds; without either, a folder that holds a run is refused (see :func:`alignkit.workflow.execute_run`).
    """
    return execute_run(PreferenceRun(recipe), resume=resume, overwrite=overwrite, console=console)


def run_recipe_file(path: str, overrides: Sequence[str] = (), plugins: Sequence[str] = (), *, resume: bool = False,
                    overwrite: bool = False, online_only: bool = False, console: Console | None = None) -> RunSummary:
    """`alignkit run` (and `alignkit online`): load the recipe at ``path`` and run it.

    A recipe with an ``online:`` section runs the online loop (:mod:`alignkit.commands.online`), any other
    preference training; ``online_only`` refuses the latter (with the online schema's error).
    """
    parsed = RecipeFile.read(path)  # once: telling online from offline and loading read the same parse
    if online_only or is_online_recipe(parsed):
        online = load_online_recipe(parsed, list(overrides), list(plugins))
        return run_online_recipe(online, resume=resume, overwrite=overwrite, console=console)
    recipe = load_recipe(parsed, list(overrides), list(plugins))
    return run_recipe(recipe, resume=resume, overwrite=overwrite, console=console)
