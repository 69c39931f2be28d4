"""The model FLOPs of an online step's update, for the run's time table (:mod:`alignkit.timing`).

The convention is :mod:`alignkit.models.flops`' and the offline trainer's: N matmul parameters, 2·N per
non-padding token for a forward, 4·N + 2·N_trainable for a forward and backward. A completion's tokens are
its prompt's and its own (the batch a forward sees, without padding). PPO's value head or value model adds its
own N, forward and trained, to the policy's; a frozen or EMA anchor is the policy with other weights, so its
forwards cost the policy's. Online training has no autocast: every FLOP is counted in the policy's dtype (a
value head's few float32 FLOPs included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from alignkit.models.flops import forward_flops, matmul_parameters, trainable_parameters, training_flops
from alignkit.models.generate import Completion
from alignkit.timing import count_flops

__all__ = ["UpdateFlops", "batch_tokens"]


def batch_tokens(completions: Sequence[Completion]) -> int:
    """The non-padding tokens of a batch of completions: each prompt's and each completion's."""
    return sum(len(c.prompt_ids) + c.num_tokens for c in completions)


@dataclass(frozen=True)
class UpdateFlops:
    """FLOPs per token of an online update's forwards, counted into the innermost open phase.

    Attributes:
        dtype: what the matmuls compute in (the policy's parameters' dtype).
        policy_forward: a no-grad forward of the policy alone (its log-probs, the anchor's).
        rollout_forward: a no-grad forward of the policy and the value model (PPO's rollout pass).
        training: a forward and backward of the policy and the value model.
    """

    dtype: str
    policy_forward: float
    rollout_forward: float
    training: float

    @classmethod
    def of(cls, policy: nn.Module, value: nn.Module | None = None) -> UpdateFlops:
        """The figures of ``policy`` and (PPO) its ``value`` head or model."""
        n = matmul_parameters(policy)
        n_value = matmul_parameters(value) if value is not None else 0
        trained = training_flops(n, trainable_parameters(policy), 1)
        if value is not None:
            trained += training_flops(n_value, trainable_parameters(value), 1)
        dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
        return cls(dtype, forward_flops(n, 1), forward_flops(n + n_value, 1), trained)

    def count_forward(self, completions: Sequence[Completion], *, value: bool = False) -> None:
        """Count a no-grad forward over ``completions``: the policy's, with the value model's when ``value``."""
        per_token = self.rollout_forward if value else self.policy_forward
        count_flops(per_token * batch_tokens(completions), self.dtype)

    def count_training(self, completions: Sequence[Completion]) -> None:
        """Count a forward and backward over ``completions``."""
        count_flops(self.training * batch_tokens(completions), self.dtype)
