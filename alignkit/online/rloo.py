"""RLOO: the leave-one-out policy gradient with a KL-penalised sequence reward.

For a prompt x and k completions y_1..y_k sampled from the policy (Kool et al. 2019; Ahmadian et al. 2024):

    KL_i = sum_t log pi(y_i,t | x, y_i,<t) - log pi_anchor(y_i,t | x, y_i,<t)        (no gradient)
    R_i  = r_i - beta * KL_i                                                          (penalised reward)
    A_i  = R_i - 1/(k-1) * sum_{j != i} R_j                                           (leave-one-out baseline)
    loss = -1/N * sum_i A_i * sum_t log pi(y_i,t | x, y_i,<t)                         (sequence-level REINFORCE)

With k = 1 there is no other sample of the same prompt, so the baseline is the mean over the batch.
Everything here is a pure function of tensors; the loop that samples and steps lives in
:mod:`alignkit.online.trainer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignkit.models.kl_estimators import kl_estimate

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "distinct_n",
    "leave_one_out_advantages",
    "penalised_rewards",
    "policy_gradient_loss",
    "sequence_kl_estimate",
]


def sequence_kl_estimate(policy_logps: Tensor, anchor_logps: Tensor) -> Tensor:
    """Per-sample KL estimate, the sequence sum of log-ratios on the sampled tokens.

    Args:
        policy_logps: (N,) sum over completion tokens of log pi.
        anchor_logps: (N,) the same sum under the anchor.

    Returns:
        (N,) detached ``policy_logps - anchor_logps`` in nats (one sample can be negative; the mean
        over samples from the policy estimates KL(pi || pi_anchor)).
    """
    return kl_estimate(policy_logps.detach(), anchor_logps, "k1")  # the one k1 (models.kl_estimators)


def penalised_rewards(rewards: Tensor, kl: Tensor, beta: float) -> Tensor:
    """R_i = r_i - beta * KL_i; shapes (N,) -> (N,)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return rewards.float() - beta * kl.float()


def leave_one_out_advantages(rewards: Tensor, batch_mean: float | None = None) -> Tensor:
    """Advantages of a (P, k) grid of rewards, k completions per prompt.

    For k > 1: A_i = R_i - mean of the other k - 1 rewards of the same prompt. For k = 1: A_i = R_i -
    mean over the whole batch (REINFORCE with a batch-mean baseline; zero for a batch of one).

    Args:
        rewards: (P, k) penalised rewards, row p holding the k samples of prompt p.
        batch_mean: k = 1 only: the mean of the whole batch when ``rewards`` is one process's share of it
            (data parallelism); default the mean of ``rewards``.

    Returns:
        (P, k) advantages (no gradient flows through them).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, k), got shape {tuple(rewards.shape)}")
    rewards = rewards.detach().float()
    k = rewards.shape[1]
    if k == 1:
        return rewards - (rewards.mean() if batch_mean is None else batch_mean)
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)  # (P, k) mean of the other samples
    return rewards - others


def policy_gradient_loss(logps: Tensor, advantages: Tensor, num_samples: int | None = None) -> Tensor:
    """-sum_i A_i * log pi(y_i) / N: its gradient is the RLOO estimate of -grad E[R].

    Args:
        logps: (n,) summed completion log-probs with gradient (a micro-batch of the N samples).
        advantages: (n,) their advantages.
        num_samples: N, the batch size the mean is over (default n); pass it when the batch is split into
            micro-batches so that their gradients add up to the full batch's.

    Returns:
        A scalar loss.
    """
    if logps.shape != advantages.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and advantages {tuple(advantages.shape)} differ in shape")
    n = num_samples if num_samples is not None else logps.numel()
    return -(advantages.detach().to(logps.dtype) * logps).sum() / max(n, 1)


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n of a batch: distinct n-grams over all n-grams of all sequences (0 when there are none).

    1 means no n-gram repeats anywhere in the batch; a policy collapsing onto one phrase drives it to 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
