"""Where a reference-based loss gets its reference log-probs: one protocol, three implementations.

The trainer only calls ``reference.logps(batch)`` (and ``model_context()`` for generation or KL
evaluation); which of these it holds follows the recipe's ``reference.mode``:

- ``copy``: :class:`FrozenCopyReference`, a frozen copy of the initial policy (or a separately loaded
  reference model) - one extra model in memory, one extra forward per step.
- ``adapters_off``: :class:`AdaptersOffReference`, the policy itself with its adapters switched off - no
  extra weights, since the frozen base model *is* the initial policy.
- ``cached``: :class:`CachedReference`, log-probs computed once for the whole dataset (see
  :class:`ReferenceLogpsCache`) - no reference model at all during training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from copy import deepcopy
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from alignkit.models.logps import DEFAULT_LOGPS, LogpsOptions, concatenated_forward
from alignkit.models.reference_cache import ReferenceLogpsCache

__all__ = ["AdaptersOffReference", "CachedReference", "FrozenCopyReference", "Reference", "eval_mode"]

Batch = Mapping[str, Tensor]


@runtime_checkable
class Reference(Protocol):
    """The reference policy of a preference objective."""

    def logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Reference (chosen, rejected) summed response log-probs, each (B,), without gradient.

        Args:
            batch: a collated preference batch (``input_ids``, ``attention_mask``, ``labels`` (2B, T),
                chosen rows first; ``index`` (B,) dataset positions).
        """
        ...

    def model_context(self) -> AbstractContextManager[nn.Module]:
        """A context yielding the reference model in eval mode (for generation or KL evaluation)."""
        ...


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) inside the block, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class FrozenCopyReference:
    """A frozen copy of the policy as it was when this object was made.

    Args:
        model: the initial policy (copied), or a separately loaded reference model (``copy=False``:
            used as is, frozen in place).
        copy: deep-copy ``model`` (so later policy updates do not reach the reference).
        logps: chunk size and packing of its forwards (:class:`~alignkit.models.logps.LogpsOptions`).
    """

    def __init__(self, model: nn.Module, *, copy: bool = True, logps: LogpsOptions = DEFAULT_LOGPS) -> None:
        self.model = _frozen_copy(model) if copy else model
        self.model.requires_grad_(False)
        self.model.eval()
        self.options = logps

    def logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), eval_mode(self.model):
            out = concatenated_forward(self.model, batch, logps=self.options)
        return out["chosen_logps"], out["rejected_logps"]

    def model_context(self) -> AbstractContextManager[nn.Module]:
        return eval_mode(self.model)


def _frozen_copy(model: nn.Module) -> nn.Module:
    # Parameters are detached in the copy anyway; copying without grads avoids duplicating .grad buffers.
    grads = {name: p.grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    try:
        return deepcopy(model)
    finally:
        for name, p in model.named_parameters():
            p.grad = grads[name]


class AdaptersOffReference:
    """The policy with its adapters disabled: the frozen base model is exactly the initial policy.

    Args:
        policy: the adapted policy model.
        disable: ``disable(policy)`` is a context manager inside which the adapters are off
            (``alignkit.peft.adapters_disabled``).
        logps: chunk size and packing of its forwards (:class:`~alignkit.models.logps.LogpsOptions`).
    """

    def __init__(
        self,
        policy: nn.Module,
        disable: Callable[[nn.Module], AbstractContextManager[object]],
        *,
        logps: LogpsOptions = DEFAULT_LOGPS,
    ) -> None:
        self.policy = policy
        self.disable = disable
        self.options = logps

    def logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), self.model_context() as model:
            out = concatenated_forward(model, batch, logps=self.options)
        return out["chosen_logps"], out["rejected_logps"]

    @contextmanager
    def model_context(self) -> Iterator[nn.Module]:
        with self.disable(self.policy), eval_mode(self.policy):
            yield self.policy


class CachedReference:
    """Reference log-probs looked up from a :class:`ReferenceLogpsCache` by ``batch["index"]``.

    Args:
        cache: the precomputed values.
        model_factory: optional; loads the reference model again for ``model_context`` (evaluation),
            since the cached mode frees it during training.
    """

    def __init__(
        self, cache: ReferenceLogpsCache, model_factory: Callable[[], nn.Module] | None = None
    ) -> None:
        self.cache = cache
        self.model_factory = model_factory

    def logps(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if "index" not in batch:
            raise KeyError("reference.mode 'cached' needs batch['index'] (the dataset position of each pair)")
        chosen, rejected = self.cache.lookup(batch["index"])
        device = batch["input_ids"].device if "input_ids" in batch else chosen.device
        return chosen.to(device), rejected.to(device)

    @contextmanager
    def model_context(self) -> Iterator[nn.Module]:
        if self.model_factory is None:
            raise RuntimeError(
                "reference.mode 'cached' keeps no reference model in memory; pass model_factory to "
                "CachedReference to reload it for evaluation"
            )
        model = self.model_factory().requires_grad_(False)
        try:
            with eval_mode(model):
                yield model
        finally:
            del model
