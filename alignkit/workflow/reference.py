"""Which model is "the reference" of a run, decided in one place for training and for evaluation.

- Training (:func:`training_reference`): the recipe's ``reference.mode``: the policy with its adapters
  switched off, a frozen copy, or log-probs computed once and cached.
- Evaluation (:func:`evaluation_reference`): the same model as training: a frozen copy already in memory,
  else the policy with its adapters off when that is the reference (an adapter, no named reference, no SFT
  stage), else the reference loaded again (:func:`reference_loader`).

The reference of a run with an SFT stage is the SFT model; with an adapter that is the policy after SFT with
its adapters on (the SFT stage trained only the adapter), never the base model with adapters off.

The untuned model (:func:`evaluation_base`, the ``base`` baseline of a judged evaluation) is the reference
when that is the initial model, the policy with its adapters off when an adapter is all training changed,
else the initial model loaded again (:func:`base_loader`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit.losses import Objective
from alignkit.models.kl import ReferenceFn
from alignkit.models.load import load_causal_lm
from alignkit.models.precision import resolve_precision
from alignkit.models.reference import (
    AdaptersOffReference,
    CachedReference,
    FrozenCopyReference,
    Reference,
    ReferenceLogpsCache,
)
from alignkit.models.reference_cache import Collate
from alignkit.peft import adapters_disabled, apply_adapter, has_adapters
from alignkit.recipe import Recipe, RecipeError
from alignkit.recipe.rules import ADAPTERS_OFF_AFTER_SFT
from alignkit.timing import phase
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint
from alignkit.train.dropout import disable_dropout
from alignkit.workflow.environment import seed_everything
from alignkit.workflow.sharded_run import RunSharding

__all__ = ["base_loader", "evaluation_base", "evaluation_reference", "reference_loader", "training_reference"]


def reference_loader(recipe: Recipe, device: torch.device, run_dir: Path) -> Callable[[], nn.Module]:
    """A function that loads the reference model again: the named reference, or the initial policy
    (re-seeded, so even a model built from a config comes back identical), after SFT when there was one.

    The SFT checkpoint of a run with an adapter holds the adapter's weights: the recipe's adapter is applied
    before it is loaded, so the model returned is the SFT model (adapters on, SFT weights).

    Args:
        run_dir: the run folder whose ``sft/checkpoints`` hold the SFT stage (the folder being evaluated,
            which may have been moved since the recipe was written).

    Raises:
        RecipeError: (when called) the recipe has an SFT stage but ``run_dir`` holds no SFT checkpoint.
    """

    def load() -> nn.Module:
        if recipe.reference.name_or_path:
            cfg = recipe.model.model_copy(update={"name_or_path": recipe.reference.name_or_path,
                                                  "from_config": None})
            model = load_causal_lm(cfg, device)
        else:
            sft_checkpoint = latest_checkpoint(run_dir / "sft" / "checkpoints") if recipe.sft.enabled else None
            if recipe.sft.enabled and sft_checkpoint is None:
                # Never the untuned model in its place: the reference of an SFT run is the SFT model.
                raise RecipeError(f"the reference is the SFT model, but {run_dir / 'sft' / 'checkpoints'} holds "
                                  "no SFT checkpoint (was the run folder copied without it?)")
            seed_everything(recipe.seed)
            model = load_causal_lm(recipe.model, device)
            if sft_checkpoint is not None:
                apply_adapter(model, recipe.adapter)  # kind none: unchanged
                load_checkpoint(sft_checkpoint, model=model, restore_rng=False)
        if recipe.model.disable_dropout:
            disable_dropout(model)
        return model

    return load


def evaluation_reference(recipe: Recipe, policy: nn.Module, load_reference: Callable[[], nn.Module],
                         training: Reference | None = None) -> ReferenceFn:
    """A zero-argument callable yielding the reference model for sampling and KL (see alignkit.models.kl).

    The same model training used: the frozen copy ``training`` when it is one; the policy with its adapters
    off when the reference is the base model under the adapter (no ``reference.name_or_path``, no SFT stage);
    else ``load_reference()`` (the named model, or the SFT model). A reference that must be loaded again is
    loaded on first use (an evaluation against the dataset's chosen responses never needs it), then kept for
    every later use.

    Args:
        recipe: the run's recipe (its ``reference`` and ``sft`` sections say which model is the reference).
        policy: the trained policy.
        load_reference: :func:`reference_loader` of the run.
        training: the reference training used, if this process trained.
    """
    if isinstance(training, FrozenCopyReference):
        return training.model_context
    if has_adapters(policy) and not recipe.reference.name_or_path and not recipe.sft.enabled:
        return AdaptersOffReference(policy, adapters_disabled).model_context
    return _loaded_once(load_reference)


def _loaded_once(load: Callable[[], nn.Module]) -> ReferenceFn:
    """A model context that loads the model (frozen, eval mode) on first use, then keeps it."""
    loaded: list[nn.Module] = []

    def model() -> contextlib.AbstractContextManager[nn.Module]:
        if not loaded:
            loaded.append(load().requires_grad_(False).eval())
        return contextlib.nullcontext(loaded[0])

    return model


def base_loader(recipe: Recipe, device: torch.device) -> Callable[[], nn.Module]:
    """A function that loads the untuned initial model again (re-seeded, as :func:`reference_loader`)."""

    def load() -> nn.Module:
        seed_everything(recipe.seed)
        model = load_causal_lm(recipe.model, device)
        if recipe.model.disable_dropout:
            disable_dropout(model)
        return model

    return load


def evaluation_base(recipe: Recipe, policy: nn.Module, reference: ReferenceFn,
                    load_base: Callable[[], nn.Module]) -> ReferenceFn:
    """A zero-argument callable yielding the untuned model, for the ``base`` baseline.

    ``reference`` itself when the reference is the untuned model (no SFT stage, no named reference: the
    very object is returned, so an evaluation samples it once); the policy with its adapters off when an
    adapter was all that training changed (SFT included); else ``load_base()`` on first use.
    """
    if not recipe.sft.enabled and not recipe.reference.name_or_path:
        return reference
    if has_adapters(policy):
        return AdaptersOffReference(policy, adapters_disabled).model_context
    return _loaded_once(load_base)


def training_reference(
    recipe: Recipe,
    objective: Objective,
    policy: nn.Module,
    pairs: Sequence[Any],
    collate: Collate,
    load_reference: Callable[[], nn.Module],
    sharding: RunSharding | None = None,
) -> Reference | None:
    """The reference the objective reads, as the recipe's ``reference.mode`` says (None if not needed).

    With a sharded policy (``sharding``), a separate reference model is sharded like it; the frozen copy is
    a sharded copy.
    """
    if not objective.needs_reference:
        return None
    mode, logps = recipe.reference.mode, recipe.model.logps
    if mode == "none":
        raise RecipeError(f"loss {objective.describe()} needs a reference, but reference.mode is 'none'")
    if mode == "adapters_off":
        if recipe.sft.enabled:
            raise RecipeError(f"reference.mode: {ADAPTERS_OFF_AFTER_SFT}")
        if not has_adapters(policy):
            raise RecipeError("reference.mode 'adapters_off' needs an adapter: set adapter.kind to bottleneck or lora")
        return AdaptersOffReference(policy, adapters_disabled, logps=logps)
    separate = load_reference() if recipe.reference.name_or_path else None
    if separate is not None and sharding is not None:
        separate = sharding.frozen(separate)
    if mode == "copy":
        if separate is not None:
            return FrozenCopyReference(separate, copy=False, logps=logps)
        if sharding is not None:
            return FrozenCopyReference(sharding.copy_of(policy), copy=False, logps=logps)
        return FrozenCopyReference(policy, logps=logps)
    # mode == "cached": one pass over every pair now; later runs with the same model and data reuse it.
    batch_size = recipe.train.eval_batch_size or max(1, recipe.train.batch_size // recipe.train.grad_accum)
    extra: dict[str, Any] = {"max_length": recipe.data.max_length, "max_prompt_length": recipe.data.max_prompt_length}
    model_id = recipe.reference.name_or_path or recipe.model.name_or_path
    with contextlib.ExitStack() as stack:
        if separate is not None:
            model = separate
        elif has_adapters(policy) and not recipe.sft.enabled:  # the base model under the adapter
            model = stack.enter_context(adapters_disabled(policy))
            extra["adapters"] = "off"  # same weights as the policy's: the key must tell them apart
        else:  # the policy as it is now: the initial model, or the SFT model (adapters on) after SFT
            model = policy
        # Under the training forward's autocast: at the first step the policy's log-probs are the reference's.
        autocast_dtype = resolve_precision(recipe.train.precision, next(model.parameters()).device).autocast_dtype
        with phase("reference log-probs"):
            cache = ReferenceLogpsCache.build(model, list(pairs), collate, batch_size, model_id, logps=logps,
                                              extra=extra, autocast_dtype=autocast_dtype)
    del separate
    return CachedReference(cache, model_factory=load_reference)
