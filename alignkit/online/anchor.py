"""The anchor of the KL penalty: the frozen initial weights, or an exponential moving average of the policy.

Both are kept as a copy of the policy's *trainable* tensors only (the whole model for full fine-tuning,
the adapter otherwise), and scored by swapping those tensors into the policy for the duration of a
``with anchor.model_context() as model:`` block. No second model is held in memory and the swap moves
tensor references, not data.

EMA update after every optimizer step (rate mu):  theta_anchor <- (1 - mu) * theta_anchor + mu * theta.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["EMAAnchor", "FrozenAnchor", "swapped_parameters", "trainable_tensors"]


def trainable_tensors(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every trainable parameter, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def swapped_parameters(model: nn.Module, tensors: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Yield ``model`` with the named parameters' data replaced by ``tensors``; restored on exit.

    Raises:
        KeyError: a name that is not a parameter of ``model``.
        ValueError: a tensor whose shape differs from its parameter's.
    """
    params = dict(model.named_parameters())
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise KeyError(f"not parameters of the model: {unknown[:5]}")
    saved: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != params[name].shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)} != parameter {tuple(params[name].shape)}")
                saved[name] = params[name].data
                params[name].data = value
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].data = value


class FrozenAnchor:
    """The trainable tensors as they were at construction (the initial policy of this run)."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self.tensors = trainable_tensors(policy)

    def model_context(self):
        """Context yielding the policy with the anchor's weights in place."""
        return swapped_parameters(self.policy, self.tensors)

    def update(self) -> None:
        """A frozen anchor never moves."""

    def state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint must keep to restore the anchor: nothing (it is the run's starting weights)."""
        return {}

    def load_state_dict(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore from :meth:`state_dict`."""


class EMAAnchor(FrozenAnchor):
    """An exponential moving average of the policy's trainable tensors, starting at the current policy.

    Args:
        policy: the model being trained.
        rate: mu in (0, 1]; 1 follows the policy exactly, small values move slowly.
    """

    def __init__(self, policy: nn.Module, rate: float) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"EMA rate must be in (0, 1], got {rate}")
        super().__init__(policy)
        self.rate = float(rate)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged tensors (they cannot be recomputed from the policy)."""
        return {n: t.detach().contiguous().cpu() for n, t in self.tensors.items()}

    def load_state_dict(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the averaged tensors of a checkpoint."""
        missing = sorted(set(self.tensors) - set(tensors))
        if missing:
            raise KeyError(f"the EMA anchor checkpoint lacks tensors: {missing[:5]}")
        for name in self.tensors:
            self.tensors[name] = tensors[name].to(self.tensors[name].device, self.tensors[name].dtype)

    @torch.no_grad()
    def update(self) -> None:
        """theta_anchor <- (1 - mu) theta_anchor + mu theta, for every trainable tensor."""
        for name, param in self.policy.named_parameters():
            if name in self.tensors:
                self.tensors[name].lerp_(param.detach().to(self.tensors[name].dtype), self.rate)
