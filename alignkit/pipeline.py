"""`alignkit run`: recipe -> data -> models (+adapter) -> [SFT] -> preference training -> evaluation -> report.

This module only wires the layers together; each step's logic lives in its own package.
"""

from __future__ import annotations

import contextlib
import random
import resource
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from alignkit.cache import atomic_folder, write_atomic
from alignkit.data import PreparedData, TokenizedPair, collate_preference, collate_sft
from alignkit.data import prepare_data as prepare_data_section
from alignkit.data.kway import collate_kway, prepare_kway_data
from alignkit.eval.evaluate_run import evaluate_heldout, heldout_prompts
from alignkit.losses import Objective, build_objective
from alignkit.models.load import load_causal_lm, load_reward_model, load_tokenizer
from alignkit.models.reference import (
    AdaptersOffReference,
    CachedReference,
    FrozenCopyReference,
    Reference,
    ReferenceLogpsCache,
)
from alignkit.peft import (
    adapters_disabled,
    apply_adapter,
    count_parameters,
    export_with_adapters,
    format_parameter_table,
    has_adapters,
    parameter_table,
)
from alignkit.recipe import Recipe, RecipeError, recipe_to_yaml
from alignkit.report.tables import write_report
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint
from alignkit.train.distributed import DistEnv, init_distributed
from alignkit.train.trainer import Trainer, TrainResult

__all__ = ["RunSummary", "prepare_data", "resolve_device", "run_recipe", "seed_everything"]


@dataclass
class RunSummary:
    run_dir: Path
    stages: dict[str, TrainResult] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, env: DistEnv | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank if env else 0)
        return torch.device("cpu")
    return torch.device(name)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_data(
    recipe: Recipe, tokenizer, policy: torch.nn.Module | None, console: Console
) -> PreparedData:
    """Load (or, for the sentiment task, generate with the initial policy), split and tokenize the pairs."""
    kind = recipe.data.source.kind
    if kind == "sentiment":
        from alignkit.data.sentiment import prepare_sentiment_data

        return prepare_sentiment_data(recipe.data, tokenizer, policy, seed=recipe.seed, console=console)
    if (kind == "kway_jsonl") != (build_objective(recipe.loss).inputs == "kway"):
        raise RecipeError("K-way comparisons (data.source.kind: kway_jsonl) go with a K-way loss (reward_kway) "
                          "and only with one")
    if kind == "kway_jsonl":
        return prepare_kway_data(recipe.data, tokenizer)
    return prepare_data_section(recipe.data, tokenizer)


def reference_loader(recipe: Recipe, device: torch.device):
    """A function that loads the reference model again: the named reference, or the initial policy
    (re-seeded, so even a model built from a config comes back identical), after SFT when there was one."""

    def load() -> torch.nn.Module:
        if recipe.reference.name_or_path:
            cfg = recipe.model.model_copy(update={"name_or_path": recipe.reference.name_or_path,
                                                  "from_config": None})
            return load_causal_lm(cfg, device)
        seed_everything(recipe.seed)
        model = load_causal_lm(recipe.model, device)
        sft_checkpoint = latest_checkpoint(recipe.run_dir() / "sft" / "checkpoints")
        if recipe.sft.enabled and sft_checkpoint is not None:
            load_checkpoint(sft_checkpoint, model=model, restore_rng=False)
        return model

    return load


def _build_reference(
    recipe: Recipe,
    objective: Objective,
    policy: torch.nn.Module,
    pairs: list[TokenizedPair],
    collate,
    device: torch.device,
) -> Reference | None:
    """The reference the objective reads, as the recipe's ``reference.mode`` says (None if not needed)."""
    if not objective.needs_reference:
        return None
    mode, chunk, packed = recipe.reference.mode, recipe.model.logps_chunk_size, recipe.model.padding_free
    if mode == "none":
        raise RecipeError(f"loss {objective.describe()} needs a reference, but reference.mode is 'none'")
    if mode == "adapters_off":
        if not has_adapters(policy):
            raise RecipeError("reference.mode 'adapters_off' needs an adapter: set adapter.kind to bottleneck or lora")
        return AdaptersOffReference(policy, adapters_disabled, chunk_size=chunk, padding_free=packed)
    load_reference = reference_loader(recipe, device)
    separate = load_reference() if recipe.reference.name_or_path else None
    if mode == "copy":
        if separate is not None:
            return FrozenCopyReference(separate, chunk_size=chunk, copy=False, padding_free=packed)
        return FrozenCopyReference(policy, chunk_size=chunk, padding_free=packed)
    # mode == "cached": one pass over every pair now; later runs with the same model and data reuse it.
    batch_size = recipe.train.eval_batch_size or max(1, recipe.train.batch_size // recipe.train.grad_accum)
    extra = {"max_length": recipe.data.max_length, "max_prompt_length": recipe.data.max_prompt_length}
    model_id = recipe.reference.name_or_path or recipe.model.name_or_path
    with contextlib.ExitStack() as stack:
        if separate is not None:
            model = separate
        elif has_adapters(policy):
            model = stack.enter_context(adapters_disabled(policy))
        else:
            model = policy
        cache = ReferenceLogpsCache.build(model, pairs, collate, batch_size, model_id, chunk_size=chunk,
                                          padding_free=packed, extra=extra)
    del separate
    return CachedReference(cache, model_factory=None if has_adapters(policy) else load_reference)


def save_model(policy: torch.nn.Module, tokenizer, folder: Path) -> None:
    """The trained model: a transformers folder (plus the adapter files when there are adapters)."""
    if has_adapters(policy):
        export_with_adapters(policy, tokenizer, folder)
        return
    with atomic_folder(folder) as tmp:
        policy.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def _eval_reference(recipe: Recipe, reference: Reference | None, policy: torch.nn.Module,
                    device: torch.device):
    """A zero-argument callable yielding the reference model for sampling and KL (see alignkit.eval.kl)."""
    if has_adapters(policy):
        return AdaptersOffReference(policy, adapters_disabled).model_context
    if isinstance(reference, FrozenCopyReference):
        return reference.model_context
    model = reference_loader(recipe, device)().requires_grad_(False).eval()  # loaded once, used twice
    return lambda: contextlib.nullcontext(model)


def run_recipe(recipe: Recipe, *, resume: bool = False, console: Console | None = None) -> RunSummary:
    """Run every stage of ``recipe``; write the run folder; return what happened."""
    console = console or Console(stderr=True)
    run_dir = recipe.run_dir()
    device = resolve_device(recipe.train.device)
    env = init_distributed(device)
    device = resolve_device(recipe.train.device, env)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "recipe.yaml", recipe_to_yaml(recipe))
    summary = RunSummary(run_dir=run_dir)
    seed_everything(recipe.seed)
    started = time.perf_counter()
    objective = build_objective(recipe.loss)

    tokenizer = load_tokenizer(recipe.model)
    is_reward_model = objective.inputs in ("scores", "kway")
    if is_reward_model:
        policy = load_reward_model(recipe.model, device, pad_token_id=tokenizer.pad_token_id)
    else:
        policy = load_causal_lm(recipe.model, device)
    data = prepare_data(recipe, tokenizer, policy, console)
    train_pairs, test_pairs = data.train, data.test
    console.print(f"data: {len(train_pairs)} train / {len(test_pairs)} held-out pairs\n{data.summary()}")

    if recipe.adapter.kind != "none":
        apply_adapter(policy, recipe.adapter)
    trainable, total = count_parameters(policy)
    console.print(format_parameter_table(parameter_table(policy)))
    chunk, packed = recipe.model.logps_chunk_size, recipe.model.padding_free
    pad_id = tokenizer.pad_token_id
    preference_collate = partial(collate_kway if objective.inputs == "kway" else collate_preference,
                                 pad_token_id=pad_id)

    if recipe.sft.enabled:
        sft_objective = build_objective({"name": "sft"})
        sft = Trainer(policy, sft_objective, recipe.sft, train_pairs=train_pairs, eval_pairs=test_pairs,
                      collate=partial(collate_sft, pad_token_id=pad_id), run_dir=run_dir / "sft",
                      seed=recipe.sft.seed if recipe.sft.seed is not None else recipe.seed, stage="sft",
                      device=device, env=env, chunk_size=chunk, padding_free=packed, console=console)
        summary.stages["sft"] = sft.fit(resume=resume)

    reference = _build_reference(recipe, objective, policy, train_pairs + test_pairs, preference_collate,
                                 device)
    trainer = Trainer(policy, objective, recipe.train, train_pairs=train_pairs, eval_pairs=test_pairs,
                      collate=preference_collate, run_dir=run_dir / "preference", reference=reference,
                      seed=recipe.train.seed if recipe.train.seed is not None else recipe.seed,
                      stage="preference", device=device, env=env, chunk_size=chunk, padding_free=packed,
                      console=console)
    result = trainer.fit(resume=resume)
    summary.stages["preference"] = result
    if env.is_main:
        save_model(policy, tokenizer, run_dir / "model")

    report: dict[str, Any] = {
        "recipe": recipe.name,
        "objective": objective.describe(),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(test_pairs),
        "parameters": {"trainable": trainable, "total": total},
        "stages": {
            name: {
                "steps": r.steps,
                "wall_seconds": r.wall_seconds,
                "steps_per_second": r.steps_per_second,
                "last_train_metrics": {k: v for k, v in r.final_metrics.items() if not k.startswith("eval/")},
                "stopped_early": r.stopped_early,
                "best_step": r.best_step,
                "eval_before": r.eval_history[0] if r.eval_history and r.eval_history[0]["step"] == 0 else None,
                "eval_after": r.eval_history[-1] if r.eval_history else None,
            }
            for name, r in summary.stages.items()
        },
    }
    if recipe.eval is not None and is_reward_model:
        console.print("[yellow]eval: skipped, a reward model does not generate (the held-out accuracy is above)[/]")
    elif recipe.eval is not None and env.is_main:
        prompts, chosen = heldout_prompts(data.test_examples)
        report.update(evaluate_heldout(recipe.eval, policy, _eval_reference(recipe, reference, policy, device),
                                       tokenizer, prompts, chosen, run_dir=run_dir, console=console,
                                       device=str(device)))
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    summary.report = report
    if env.is_main:
        write_report(report, run_dir, console=console)
    return summary
