"""The registered loss aggregations: how per-token losses become a minibatch's loss.

Every one divides by the counts of the whole minibatch (:class:`~alignkit.online.parts.base.BatchSizes`), not
of the micro-batch it is given, so the losses of a minibatch's micro-batches (and processes) add up to the
loss of the minibatch at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.online.parts.base import BatchSizes, PartConfig, register_aggregation

__all__ = ["seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean"]


def _masked(per_token: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, per_token, torch.zeros_like(per_token))


@register_aggregation("token_mean", config=PartConfig)
def token_mean(per_token: Tensor, mask: Tensor, sizes: BatchSizes, cfg: PartConfig) -> Tensor:
    """Every token of the minibatch weighs the same (PPO, DAPO; verl's and TRL's dapo/bnpo token mean).

    Yu et al. 2025 (DAPO), section 3.3: a long sequence's tokens are not diluted.

    Formula::

        L = 1/sum_i |y_i| * sum_i sum_t l_i,t
    """
    return _masked(per_token, mask).sum() / sizes.tokens


@register_aggregation("seq_mean_token_sum", config=PartConfig)
def seq_mean_token_sum(per_token: Tensor, mask: Tensor, sizes: BatchSizes, cfg: PartConfig) -> Tensor:
    """Each sequence's token sum, averaged over sequences (RLOO, REINFORCE: the sequence log-prob's gradient).

    Formula::

        L = 1/B * sum_i sum_t l_i,t
    """
    return _masked(per_token, mask).sum() / sizes.sequences


@register_aggregation("seq_mean_token_mean", config=PartConfig)
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, sizes: BatchSizes, cfg: PartConfig) -> Tensor:
    """Each sequence's token mean, averaged over sequences: every sequence weighs the same (GRPO, GSPO).

    Shao et al. 2024 (DeepSeekMath), eq. 3.

    Formula::

        L = 1/B * sum_i 1/|y_i| * sum_t l_i,t
    """
    sums = _masked(per_token, mask).sum(dim=1)
    return (sums / mask.sum(dim=1).clamp(min=1)).sum() / sizes.sequences


@register_aggregation("seq_mean_token_sum_norm", config=PartConfig)
def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, sizes: BatchSizes, cfg: PartConfig) -> Tensor:
    """Each sequence's token sum over a constant length budget L, averaged over sequences (Dr. GRPO).

    Liu et al. 2025, "Understanding R1-Zero-Like Training": no length term, so no bias toward long wrong answers.

    Formula::

        L = 1/B * sum_i 1/L_max * sum_t l_i,t      (L_max: online.max_new_tokens)
    """
    sums = _masked(per_token, mask).sum(dim=1)
    return (sums / sizes.max_tokens).sum() / sizes.sequences
