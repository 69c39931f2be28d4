"""GRPO: group-relative advantages and the clipped, KL-regularised token loss, with the Dr. GRPO variant.

For a prompt x and G completions o_1..o_G sampled from pi_old with rewards r_1..r_G (Shao et al. 2024,
"DeepSeekMath", section 4.1; Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr. GRPO):

    A_i     = (r_i - mean(r)) / (std(r) + eps)                  (GRPO; std is the sample std, n - 1)
    A_i     = r_i - mean(r)                                     (Dr. GRPO: no std division)
    rho_i,t = exp(log pi(o_i,t) - log pi_old(o_i,t))
    k3_i,t  = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1   (Schulman's k3, unbiased for KL(pi||ref))
    l_i,t   = -min(rho_i,t * A_i, clip(rho_i,t, 1 - eps, 1 + eps) * A_i) + kl_coef * k3_i,t
    loss    = 1/G * sum_i 1/|o_i| * sum_t l_i,t                 (GRPO: mean over each sequence's tokens)
    loss    = 1/G * sum_i 1/L * sum_t l_i,t                     (Dr. GRPO: L a constant, the length budget)

The std: the DeepSeekMath paper writes std(r) without saying which. TRL's ``GRPOTrainer`` (checked in
trl 1.16: ``nanstd``, with the count / (count - 1) correction) uses the Bessel-corrected sample std, as
``torch.std`` does by default, and so does :func:`group_advantages`; a few other implementations use the
population std (numpy's default), which makes every advantage larger by sqrt(G / (G - 1)). eps = 1e-4 is
TRL's.

Everything here is a pure function of tensors; the loop that samples and steps lives in
:mod:`alignkit.online.trainer`. The (B, T) conventions are those of :mod:`alignkit.online.ppo` (completion
tokens only; padding positions are ignored whatever they hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.lazy import lazy_module
from alignkit.models.kl_estimators import kl_estimate
from alignkit.online.ppo import masked_mean

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_module("torch")

__all__ = ["GRPOLossStats", "group_advantages", "grpo_token_loss", "k3_kl"]


def group_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-4) -> Tensor:
    """Group-relative advantages of P prompts x G completions, groups contiguous.

    Args:
        rewards: (P * G,) rewards; group g is rows g*G .. g*G + G - 1.
        group_size: G >= 1. With G = 1 there is no baseline but the sample itself: every advantage is 0.
        scale_by_std: divide by the group's sample std + eps (GRPO); False leaves r - mean (Dr. GRPO).
        eps: >= 0, added to the std; a constant group gets advantage 0 (not NaN) as long as eps > 0 (with
            eps = 0 a constant group is still 0: its std is taken as 1).

    Returns:
        (P * G,) float32 advantages, detached.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (P * G,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    # float64: near-equal rewards in a group (std ~1e-5 of their size) would leave float32 rounding of
    # r - mean as large as the centred values themselves once divided by the std.
    grouped = rewards.detach().double().view(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        std = grouped.std(dim=1, keepdim=True)  # sample std (n - 1)
        denominator = std + eps
        centred = centred / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return centred.float().reshape(-1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, 0 where they agree (Schulman 2020).

    On tokens sampled from pi its mean is an unbiased estimate of KL(pi || pi_ref). Gradient flows through
    ``logprobs``; ``ref_logprobs`` is detached. Shapes: any, the same for both; float32 out.
    """
    return kl_estimate(logprobs, ref_logprobs, "k3")  # the one k3 (models.kl_estimators)


@dataclass(frozen=True)
class GRPOLossStats:
    """Detached scalars over the real tokens of one call.

    Attributes:
        clip_fraction: fraction of tokens where the clipped branch is (strictly) the active one.
        kl: mean k3 per token (0 without ``ref_logprobs``).
        ratio_mean: mean of rho.
        num_tokens: the number of real tokens.
    """

    clip_fraction: Tensor
    kl: Tensor
    ratio_mean: Tensor
    num_tokens: Tensor


def grpo_token_loss(logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, advantages: Tensor,
                    mask: Tensor, clip_eps: float, kl_coef: float, length_normalise: bool = True,
                    normaliser: float | None = None,
                    num_sequences: int | None = None) -> tuple[Tensor, GRPOLossStats]:
    """The GRPO (or Dr. GRPO) loss of a batch of B completions.

    Args:
        logprobs: (B, T) log pi of the sampled tokens, with gradient.
        old_logprobs: (B, T) log pi_old, the sampling policy's (no gradient; ``logprobs.detach()`` when each
            batch gets one update).
        ref_logprobs: (B, T) log pi_ref, or None when ``kl_coef`` is 0.
        advantages: (B,) sequence advantages (:func:`group_advantages`), broadcast to the tokens.
        mask: (B, T) bool or 0/1 over the completion tokens (any padding layout).
        clip_eps: eps > 0.
        kl_coef: beta >= 0.
        length_normalise: True: each sequence's loss is the mean over its tokens (GRPO). False: the sum over
            its tokens divided by the constant ``normaliser`` (Dr. GRPO).
        normaliser: ``length_normalise=False`` only: the constant L, > 0; default T, the mask's width,
            which is the length budget only when completions are padded to it; pass the budget otherwise.
        num_sequences: the number of sequences the mean is over (default B); pass the batch's when this is
            one micro-batch or one process's share of it, so that the parts add up.

    Returns:
        ``(loss, stats)``: a scalar float32 loss and :class:`GRPOLossStats`.
    """
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)} and logprobs {tuple(logprobs.shape)} "
                         "must have the same shape")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logprobs.shape[0]},), "
                         f"got shape {tuple(advantages.shape)}")
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and logprobs {tuple(logprobs.shape)} "
                         "must have the same shape")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs")
    if normaliser is not None and length_normalise:
        raise ValueError("normaliser is the Dr. GRPO constant; it needs length_normalise=False")
    if normaliser is not None and not normaliser > 0:
        raise ValueError(f"normaliser must be > 0, got {normaliser}")
    if num_sequences is not None and num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 and 1 (or be bool)")
    m = mask != 0 if mask.dtype != torch.bool else mask

    logp = logprobs.float()
    zeros = torch.zeros_like(logp)
    log_ratio = torch.where(m, logp - old_logprobs.detach().float(), zeros)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float().to(logp.device).unsqueeze(1).expand_as(logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if ref_logprobs is not None:
        if ref_logprobs.shape != logprobs.shape:
            raise ValueError(f"ref_logprobs {tuple(ref_logprobs.shape)} and logprobs {tuple(logprobs.shape)} "
                             "must have the same shape")
        kl = k3_kl(torch.where(m, logp, zeros), torch.where(m, ref_logprobs.detach().float(), zeros))
    else:
        kl = zeros
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl
    token_sums = torch.where(m, per_token, zeros).sum(dim=1)  # (B,)
    if length_normalise:
        per_sequence = token_sums / m.sum(dim=1).clamp(min=1)
    else:
        per_sequence = token_sums / (normaliser if normaliser is not None else max(logp.shape[1], 1))
    loss = per_sequence.sum() / (num_sequences if num_sequences is not None else max(logp.shape[0], 1))
    with torch.no_grad():
        stats = GRPOLossStats(
            clip_fraction=masked_mean((clipped > unclipped).float(), m),
            kl=masked_mean(kl, m),
            ratio_mean=masked_mean(ratio, m),
            num_tokens=m.sum(),
        )
    return loss, stats
