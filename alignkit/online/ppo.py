"""PPO for language models: per-token rewards, GAE, whitening, and the clipped policy and value losses.

One completion is one episode; its tokens are the actions. With pi the policy, pi_ref the frozen reference,
V the value head, a sequence reward R(x, y) at the end and right-padded (B, T) tensors over the completion
tokens (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Ouyang et al. 2022,
InstructGPT; Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO"):

    r_t     = -beta * (log pi(y_t) - log pi_ref(y_t)) + [t = last real token] * R(x, y)     (token reward)
    delta_t = r_t + gamma * V_{t+1} - V_t,  V_{t+1} = 0 after the last real token            (TD error)
    A_t     = delta_t + gamma * lam * A_{t+1}                                   (GAE, Schulman et al. 2016)
    G_t     = A_t + V_t                                                                 (value targets)
    rho_t   = exp(log pi(y_t) - log pi_old(y_t))                                      (importance ratio)
    L_pi    = 1/N * sum_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))  (Schulman et al. 2017)
    L_V     = 1/N * sum_t 0.5 * max((V_t - G_t)^2, (clip(V_t, V_old_t - eps_v, V_old_t + eps_v) - G_t)^2)

N is the number of real tokens (or a normaliser the caller passes, e.g. the token count of the whole batch
when it is split into micro-batches or processes). The episode ends at the last real token (a completion cut
at the length budget is treated as ended too, as in the implementations above: no bootstrap from V).

Padding convention: every (B, T) tensor covers completion tokens only, and ``mask`` is right-padded, each row
some real tokens then only padding (``[1, 1, 0]`` is fine, ``[1, 0, 1]`` and ``[0, 1, 1]`` are refused where
the order of tokens matters: :func:`token_rewards` and :func:`gae`). Padding positions come out as 0 and
whatever they hold on input (even inf or NaN) is ignored.

Everything here is a pure function of tensors; the loop that samples and steps lives in
:mod:`alignkit.online.trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.lazy import lazy_module
from alignkit.models.kl_estimators import kl_estimate

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_module("torch")

__all__ = [
    "PolicyLossStats",
    "clipped_surrogate_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "masked_mean",
    "masked_moments",
    "token_rewards",
    "whiten",
]


def _bool_mask(mask: Tensor, shape: torch.Size, name: str = "mask") -> Tensor:
    """``mask`` as bool after checking its shape and that it holds only 0 and 1."""
    if mask.shape != shape:
        raise ValueError(f"{name} {tuple(mask.shape)} must have the shape {tuple(shape)} of the values")
    if mask.dtype == torch.bool:
        return mask
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
    return mask != 0


def _check_2d(name: str, tensor: Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be (B, T), got shape {tuple(tensor.shape)}")


def _check_same_shape(reference_name: str, reference: Tensor, **others: Tensor) -> None:
    for name, tensor in others.items():
        if tensor.shape != reference.shape:
            raise ValueError(f"{name} {tuple(tensor.shape)} and {reference_name} {tuple(reference.shape)} "
                             "must have the same shape")


def _check_right_padded(mask: Tensor) -> None:
    """Refuse a bool (B, T) mask in which a real token follows a padding position."""
    gaps = mask[:, 1:] & ~mask[:, :-1]
    if bool(gaps.any()):
        rows = sorted({int(r) for r in gaps.nonzero()[:, 0].tolist()})
        raise ValueError(f"mask must be right-padded (real tokens first, then only padding); rows {rows[:8]} "
                         "have a real token after a padding position")


def _check_normaliser(normaliser: float | None) -> None:
    if normaliser is not None and not normaliser > 0:
        raise ValueError(f"normaliser must be > 0, got {normaliser}")


def masked_mean(values: Tensor, mask: Tensor, normaliser: float | None = None) -> Tensor:
    """sum of ``values`` over the real positions / ``normaliser`` (default: the number of real positions).

    Args:
        values: any shape.
        mask: the same shape, bool or 0/1.
        normaliser: the denominator, > 0; pass the token count of the whole batch when ``values`` is one
            micro-batch or one process's share of it, so that the parts add up to the batch mean.

    Returns:
        A scalar (0 when there is no real position and no normaliser).
    """
    _check_normaliser(normaliser)
    m = _bool_mask(mask, values.shape)
    total = torch.where(m, values, torch.zeros_like(values)).sum()
    if normaliser is not None:
        return total / normaliser
    return total / m.sum().clamp(min=1)


def token_rewards(kl_per_token: Tensor, sequence_reward: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards r_t = -beta * KL_t, plus the sequence reward at the last real token of each row.

    Args:
        kl_per_token: (B, T) log pi - log pi_ref of the sampled tokens.
        sequence_reward: (B,) the reward model's score of each completion.
        mask: (B, T) bool or 0/1, right-padded; every row needs at least one real token (else its reward
            would have nowhere to go).
        beta: KL coefficient, >= 0.

    Returns:
        (B, T) float32 rewards, detached, 0 at padding.
    """
    _check_2d("kl_per_token", kl_per_token)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if sequence_reward.shape != kl_per_token.shape[:1]:
        raise ValueError(f"sequence_reward must be (B,) = ({kl_per_token.shape[0]},), "
                         f"got shape {tuple(sequence_reward.shape)}")
    m = _bool_mask(mask, kl_per_token.shape)
    _check_right_padded(m)
    lengths = m.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every row of mask needs at least one real token to carry its sequence reward")
    kl = kl_per_token.detach().float()
    rewards = torch.where(m, -beta * kl, torch.zeros_like(kl))
    rows = torch.arange(kl.shape[0], device=kl.device)
    return rewards.index_put((rows, lengths - 1), sequence_reward.detach().float().to(kl.device),
                             accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the real tokens of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after the last real token, and
    A_t = delta_t + gamma * lam * A_{t+1}. lam = 0 gives the one-step TD error, lam = 1 the discounted
    Monte Carlo return minus V_t.

    Args:
        rewards: (B, T) per-token rewards (:func:`token_rewards`).
        values: (B, T) V_t, the value head's estimate at each completion token (under the rollout policy).
        mask: (B, T) bool or 0/1, right-padded.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, each (B, T) float32, detached, 0 at padding; returns = advantages + values.
    """
    _check_2d("rewards", rewards)
    _check_same_shape("rewards", rewards, values=values)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    m = _bool_mask(mask, rewards.shape)
    _check_right_padded(m)
    zeros = torch.zeros(rewards.shape, dtype=torch.float32, device=rewards.device)
    r = torch.where(m, rewards.detach().float(), zeros)
    v = torch.where(m, values.detach().float(), zeros)
    next_value = zeros[:, 0]  # V after the last column: 0, the episode has ended
    next_advantage = zeros[:, 0]
    columns: list[Tensor] = []
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        advantage = torch.where(m[:, t], delta + gamma * lam * next_advantage, zeros[:, t])
        columns.append(advantage)
        next_value, next_advantage = v[:, t], advantage  # both 0 at padding: a row's episode ends there
    advantages = torch.stack(columns[::-1], dim=1) if columns else zeros
    return advantages, torch.where(m, advantages + v, zeros)


def masked_moments(values: Tensor, mask: Tensor) -> tuple[float, float, float]:
    """(sum, sum of squares, count) of ``values`` over the real positions, accumulated in float64.

    Sum them over processes (e.g. :func:`alignkit.online.parallel.global_sums`) and pass the result to
    :func:`whiten` as ``moments``: every process then whitens with the mean and variance of the whole batch,
    and N processes give exactly what one process would give on the concatenated batch.
    """
    m = _bool_mask(mask, values.shape)
    dtype = torch.float32 if values.device.type == "mps" else torch.float64  # MPS has no float64
    x = torch.where(m, values.detach().to(dtype), torch.zeros((), dtype=dtype, device=values.device))
    return float(x.sum()), float((x * x).sum()), float(m.sum())


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True,
           moments: tuple[float, float, float] | None = None, unbiased: bool = True,
           eps: float = 1e-8) -> Tensor:
    """Masked whitening: (x - mean) / sqrt(var + eps) over the real positions.

    The variance is the unbiased (Bessel-corrected, n - 1) one by default, as ``masked_whiten`` in TRL's
    PPO and ``torch.var``; ``unbiased=False`` divides by n instead.

    Args:
        values: any shape (e.g. (B, T) advantages).
        mask: the same shape, bool or 0/1 (any padding layout).
        shift_mean: False adds the mean back after scaling (only the scale changes).
        moments: ``(sum, sum_sq, count)`` over the whole batch, from :func:`masked_moments` summed over
            processes; default those of ``values``.
        unbiased: divide the sum of squared deviations by n - 1 (default) or by n.
        eps: added to the variance.

    Returns:
        Whitened values in the dtype of ``values``, 0 at padding.

    Raises:
        ValueError: when there is no real position (or only one with ``unbiased``).
    """
    m = _bool_mask(mask, values.shape)
    total, total_sq, count = moments if moments is not None else masked_moments(values, m)
    if count < (2 if unbiased else 1):
        raise ValueError(f"whitening needs at least {2 if unbiased else 1} real position(s) for the "
                         f"{'unbiased ' if unbiased else ''}variance, got {count:g}")
    mean = total / count
    variance = max(total_sq - total * mean, 0.0) / (count - 1 if unbiased else count)
    whitened = (values - mean) / math.sqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))


@dataclass(frozen=True)
class PolicyLossStats:
    """Detached scalars over the real tokens of one call (means over ``num_tokens``, whatever the normaliser).

    Attributes:
        clip_fraction: fraction of tokens where the clipped branch is the larger (strictly) term.
        approx_kl: mean of k3 = (rho - 1) - log rho, Schulman's estimator of KL(pi_old || pi).
        ratio_mean: mean of rho.
        num_tokens: the number of real tokens (to weight the stats of micro-batches).
    """

    clip_fraction: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    num_tokens: Tensor


def clipped_surrogate_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
    normaliser: float | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """PPO's clipped surrogate: mean over real tokens of max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)).

    Args:
        logprobs: (B, T) log pi of the sampled tokens, with gradient.
        old_logprobs: (B, T) log pi_old, the rollout policy's (no gradient).
        advantages: (B, T) per-token advantages (no gradient), usually whitened.
        mask: (B, T) bool or 0/1 (any padding layout).
        clip_eps: eps > 0.
        normaliser: denominator of the token mean (default the number of real tokens here); pass the token
            count of the whole batch when this is one micro-batch or one process's share of it.

    Returns:
        ``(loss, stats)``: a scalar float32 loss and :class:`PolicyLossStats`.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs, advantages=advantages)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    _check_normaliser(normaliser)
    m = _bool_mask(mask, logprobs.shape)
    logp = logprobs.float()
    zeros = torch.zeros_like(logp)
    log_ratio = torch.where(m, logp - old_logprobs.detach().float(), zeros)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages.detach().float(), zeros)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), m, normaliser)
    with torch.no_grad():
        stats = PolicyLossStats(
            clip_fraction=masked_mean((clipped > unclipped).float(), m),
            # k3 of KL(pi_old || pi) on the tokens pi_old sampled: (rho - 1) - log rho
            approx_kl=masked_mean(kl_estimate(torch.where(m, old_logprobs.detach().float(), zeros),
                                              torch.where(m, logp.detach(), zeros), "k3"), m),
            ratio_mean=masked_mean(ratio, m),
            num_tokens=m.sum(),
        )
    return loss, stats


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip_eps_value: float, normaliser: float | None = None) -> tuple[Tensor, Tensor]:
    """0.5 * max((V - G)^2, (clip(V, V_old - eps, V_old + eps) - G)^2), the masked token mean.

    Args:
        values: (B, T) the value head's V_t now, with gradient.
        old_values: (B, T) V_t at rollout time (no gradient).
        returns: (B, T) the targets G_t from :func:`gae` (no gradient).
        mask: (B, T) bool or 0/1.
        clip_eps_value: eps > 0, in the units of the value.
        normaliser: as in :func:`clipped_surrogate_loss`.

    Returns:
        ``(loss, clip_fraction)``: the scalar float32 loss and the detached fraction of real tokens where the
        clipped term is (strictly) the larger.
    """
    _check_2d("values", values)
    _check_same_shape("values", values, old_values=old_values, returns=returns)
    if not clip_eps_value > 0:
        raise ValueError(f"clip_eps_value must be > 0, got {clip_eps_value}")
    _check_normaliser(normaliser)
    m = _bool_mask(mask, values.shape)
    v = values.float()
    zeros = torch.zeros_like(v)
    v = torch.where(m, v, zeros)
    v_old = torch.where(m, old_values.detach().float(), zeros)
    g = torch.where(m, returns.detach().float(), zeros)
    # Within the band the clipped value is v itself, not v_old + (v - v_old), which can differ from v by a
    # rounding and would count as clipped.
    moved = v - v_old
    v_clipped = torch.where(moved.abs() > clip_eps_value,
                            v_old + torch.clamp(moved, -clip_eps_value, clip_eps_value), v)
    unclipped = (v - g) ** 2
    clipped = (v_clipped - g) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), m, normaliser)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), m)
    return loss, clip_fraction


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[G - V] / Var[G] over the real positions (both variances over n, so the ratio is exact).

    1 is a perfect value head, 0 one no better than the mean return, negative worse than it. NaN when the
    returns do not vary (or there is no real position), following Stable-Baselines3.

    Returns:
        A detached float32 scalar.
    """
    _check_same_shape("values", values, returns=returns)
    m = _bool_mask(mask, values.shape)
    with torch.no_grad():
        dtype = torch.float32 if values.device.type == "mps" else torch.float64  # MPS has no float64
        v, g = values.detach().to(dtype), returns.detach().to(dtype)

        def variance(x: Tensor) -> Tensor:
            mean = masked_mean(x, m)
            return masked_mean((x - mean) ** 2, m)

        var_g = variance(g)
        if not bool(m.any()) or float(var_g) == 0.0:
            return torch.tensor(float("nan"), device=values.device)
        return (1.0 - variance(g - v) / var_g).float()


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens of the policy's entropy H_t = -sum_v p_v log p_v (nats).

    Args:
        logits: (B, T, V) the logits that predict each completion token.
        mask: (B, T) bool or 0/1.

    Returns:
        A detached float32 scalar.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    m = _bool_mask(mask, logits.shape[:2])
    with torch.no_grad():
        log_p = torch.log_softmax(logits.detach().float(), dim=-1)
        p = log_p.exp()
        entropy = torch.where(p > 0, -p * log_p, torch.zeros_like(p)).sum(dim=-1)  # 0 log 0 = 0
        return masked_mean(entropy, m)
