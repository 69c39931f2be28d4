"""The properties every registered online part must have, as plain functions of a spec and inputs.

``test_online_parts_properties`` runs them over every registered part (built-ins and the example plugin) on
inputs hypothesis draws; ``test_online_parts_mutations`` shows which of them catch planted mistakes. Each
raises AssertionError naming the part when the property fails.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.online.parts import AdvantageInputs, BatchSizes, PartSpec, PolicyLossInputs

__all__ = [
    "check_aggregation_splits",
    "check_baseline_excludes_self",
    "check_bounded_weights",
    "check_centred",
    "check_correction_cap",
    "check_kl_estimator",
    "check_ratio_one_is_policy_gradient",
    "check_seq_mean_weighs_sequences_equally",
    "check_token_mean_ignores_padding_and_rows",
    "mask_of",
]


def mask_of(lengths: list[int], width: int | None = None) -> Tensor:
    width = width or max(lengths)
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _token_grads(spec: PartSpec, logps: Tensor, old: Tensor, adv: Tensor, mask: Tensor) -> Tensor:
    """d(sum of per-token losses)/d logps: each token's gradient (aggregation-free)."""
    x = logps.clone().requires_grad_(True)
    out = spec.fn(PolicyLossInputs(x, old, adv, mask), spec.config())
    assert out.per_token.shape == mask.shape, spec.name
    assert bool((out.per_token[~mask] == 0).all()), f"{spec.name}: a padding position has a loss"
    out.per_token.sum().backward()
    assert x.grad is not None
    return x.grad


def check_ratio_one_is_policy_gradient(spec: PartSpec, logps: Tensor, adv: Tensor, mask: Tensor) -> None:
    """At ratio 1 (log pi = log pi_old) every token's gradient is the plain policy gradient's, -A."""
    grads = _token_grads(spec, logps, logps.detach().clone(), adv, mask)
    want = torch.where(mask, -adv, torch.zeros_like(adv))
    torch.testing.assert_close(grads, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{spec.name}: {m}")


def check_bounded_weights(spec: PartSpec, logps: Tensor, old: Tensor, adv: Tensor, mask: Tensor) -> None:
    """A token's gradient never exceeds |A| x the bound the loss declares (per sign of A)."""
    assert spec.weight_bound is not None, f"{spec.name} declares no weight bound"
    positive, negative = spec.weight_bound(spec.config())
    grads = _token_grads(spec, logps, old, adv, mask)
    bound = torch.where(adv > 0, positive, negative) * adv.abs()
    excess = torch.where(mask, grads.abs() - bound * (1 + 1e-5) - 1e-6, torch.zeros_like(grads))
    assert bool((excess <= 0).all()), f"{spec.name}: a token's gradient passes its bound by {float(excess.max()):g}"


def _aggregate(spec: PartSpec, per_token: Tensor, mask: Tensor, sizes: BatchSizes) -> Tensor:
    return spec.fn(per_token, mask, sizes, spec.config())


def _sizes(mask: Tensor, max_tokens: float) -> BatchSizes:
    return BatchSizes(float(mask.sum()), float(mask.shape[0]), max_tokens)


def check_aggregation_splits(spec: PartSpec, per_token: Tensor, mask: Tensor, cut: int, max_tokens: float) -> None:
    """The sum of two micro-batches' losses (each divided by the whole batch's counts) is the batch's loss."""
    sizes = _sizes(mask, max_tokens)
    whole = _aggregate(spec, per_token, mask, sizes)
    parts = _aggregate(spec, per_token[:cut], mask[:cut], sizes) + _aggregate(spec, per_token[cut:], mask[cut:], sizes)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6, msg=lambda m: f"{spec.name}: {m}")


def check_token_mean_ignores_padding_and_rows(spec: PartSpec, per_token: Tensor, mask: Tensor,
                                              max_tokens: float) -> None:
    """token_mean: extra padding (holding anything) changes nothing, and every token weighs the same wherever
    its row is (the same tokens laid out in one row give the same loss)."""
    sizes = _sizes(mask, max_tokens)
    loss = _aggregate(spec, per_token, mask, sizes)
    padded = torch.cat([per_token, torch.full((per_token.shape[0], 3), 7.0)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros((mask.shape[0], 3), dtype=torch.bool)], dim=1)
    torch.testing.assert_close(_aggregate(spec, padded, padded_mask, sizes), loss, msg=lambda m: f"{spec.name}: {m}")
    one_row = per_token[mask].unsqueeze(0)
    row_sizes = BatchSizes(sizes.tokens, 1.0, max_tokens)
    torch.testing.assert_close(_aggregate(spec, one_row, torch.ones_like(one_row, dtype=torch.bool), row_sizes),
                               loss, rtol=1e-5, atol=1e-6, msg=lambda m: f"{spec.name}: tokens weigh unequally: {m}")


def check_seq_mean_weighs_sequences_equally(spec: PartSpec, per_token: Tensor, mask: Tensor,
                                            max_tokens: float) -> None:
    """A seq_mean aggregation gives every sequence the same weight: a sequence's contribution is the same when
    each of its tokens is repeated (twice as long, the same per-token values), for a token-mean per sequence."""
    sizes = _sizes(mask, max_tokens)
    loss = _aggregate(spec, per_token, mask, sizes)
    doubled = per_token.repeat_interleave(2, dim=1)
    doubled_mask = mask.repeat_interleave(2, dim=1)
    again = _aggregate(spec, doubled, doubled_mask, BatchSizes(2 * sizes.tokens, sizes.sequences, max_tokens))
    torch.testing.assert_close(again, loss, rtol=1e-5, atol=1e-6, msg=lambda m: f"{spec.name}: {m}")


def _advantages(spec: PartSpec, scores: Tensor, group_size: int) -> Tensor:
    mask = mask_of([3] * scores.numel())
    inputs = AdvantageInputs(rewards=scores, scores=scores, token_kl=torch.zeros(mask.shape), kl_coef=0.0,
                             mask=mask, group_size=group_size)
    return spec.fn(inputs, spec.config()).advantages[:, 0]


def check_centred(spec: PartSpec, scores: Tensor, group_size: int) -> None:
    """Advantages sum to 0 over each group (or the batch), as the estimator declares."""
    a = _advantages(spec, scores, group_size).double()
    sums = a.view(-1, group_size).sum(dim=1) if spec.extra["centred"] == "group" else a.sum().unsqueeze(0)
    scale = 1 + scores.abs().max().item() * group_size
    assert bool((sums.abs() <= 1e-5 * scale).all()), f"{spec.name}: advantages do not sum to 0: {sums.tolist()}"


def check_baseline_excludes_self(spec: PartSpec, scores: Tensor, group_size: int, index: int, shift: float) -> None:
    """A sample's baseline (score - advantage) does not move when only its own score moves."""
    before = scores - _advantages(spec, scores, group_size)
    moved = scores.clone()
    moved[index] += shift
    after = moved - _advantages(spec, moved, group_size)
    torch.testing.assert_close(after[index], before[index], rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{spec.name}: the baseline includes the sample itself: {m}")


def check_kl_estimator(spec: PartSpec, logps: Tensor, ref: Tensor) -> None:
    """Every estimator is 0 where pi = pi_ref; k2 and k3 are >= 0 everywhere."""
    torch.testing.assert_close(spec.fn(logps, logps), torch.zeros_like(logps), msg=lambda m: f"{spec.name}: {m}")
    if spec.name in ("k2", "k3"):
        assert bool((spec.fn(logps, ref) >= 0).all()), f"{spec.name} is negative"


def check_correction_cap(spec: PartSpec, trainer: Tensor, sampler: Tensor, mask: Tensor) -> None:
    """Importance weights are >= 0, 0 at padding, never above the cap, and 1 where the two agree."""
    cfg = spec.config()
    weights = spec.fn(trainer, sampler, mask, cfg)
    cap = getattr(cfg, "cap", 1.0)
    assert bool((weights >= 0).all()) and bool((weights[~mask] == 0).all()), spec.name
    assert bool((weights <= cap * (1 + 1e-6)).all()), f"{spec.name}: a weight passes the cap {cap}"
    same = spec.fn(trainer, trainer, mask, cfg)
    torch.testing.assert_close(same, mask.float(), msg=lambda m: f"{spec.name}: {m}")
