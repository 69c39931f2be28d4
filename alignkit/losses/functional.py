"""Small numerically stable building blocks shared by the loss families.

Every helper takes and returns (B,) tensors. Nothing here reduces over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_module
from alignkit.losses.base import PreferenceStats

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = [
    "LOG1MEXP_MAX",
    "average_logps",
    "log1mexp",
    "logratios",
    "rewards_by_label",
    "require",
    "unpaired_logratios",
]

# log(1 - exp(x)) is -inf at x = 0 (a sequence of probability one). Capping x just below 0 caps the
# log-odds at about -log(1e-6) = 13.8 nats, which keeps values and gradients finite.
LOG1MEXP_MAX = -1e-6


def require(stats: PreferenceStats, loss: str, *names: str) -> list[torch.Tensor]:
    """The named tensors of ``stats``, or a clear error naming the loss and the missing field.

    Args:
        stats: the batch statistics.
        loss: the loss name, for the error message.
        *names: field names of :class:`PreferenceStats`.

    Returns:
        The tensors in the order of ``names``.

    Raises:
        ValueError: when one of them is None.
    """
    out = []
    for name in names:
        value = getattr(stats, name)
        if value is None:
            hint = " (declare needs_reference=True so the trainer computes it)" if "reference" in name else ""
            raise ValueError(f"loss {loss!r} needs PreferenceStats.{name}, but it is None{hint}")
        out.append(value)
    return out


def average_logps(logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-token mean log-prob: (B,) sums over (B,) token counts (counts below 1 count as 1)."""
    return logps / lengths.clamp(min=1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, finite everywhere (x is capped at ``LOG1MEXP_MAX``).

    Uses log(-expm1(x)) near 0 and log1p(-exp(x)) far from it, the split that keeps full precision
    on both sides (Mächler 2012, "Accurately computing log(1 - exp(-|a|))").
    """
    x = x.clamp(max=LOG1MEXP_MAX)
    near_zero = x > -0.6931471805599453  # -log 2
    # Evaluate each branch only where it is accurate; the other side gets a harmless dummy value so
    # that torch.where never routes a nan/inf gradient.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def logratios(
    stats: PreferenceStats, loss: str, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy-minus-reference log-ratios of the chosen and the rejected responses.

    Args:
        stats: statistics with policy and reference log-probs.
        loss: the loss name, for errors.
        average: divide each log-prob by its response length first (per-token log-ratios).

    Returns:
        (chosen_logratios, rejected_logratios), each (B,):
        log π(yw) − log π_ref(yw) and log π(yl) − log π_ref(yl).
    """
    pc, pr, rc, rr = require(
        stats, loss, "policy_chosen_logps", "policy_rejected_logps",
        "reference_chosen_logps", "reference_rejected_logps",
    )
    chosen, rejected = pc - rc, pr - rr
    if average:
        lc, lr = require(stats, loss, "chosen_lengths", "rejected_lengths")
        chosen, rejected = average_logps(chosen, lc), average_logps(rejected, lr)
    return chosen, rejected


def unpaired_logratios(stats: PreferenceStats, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy-minus-reference log-ratio of each unpaired example's response, and its label.

    Returns:
        (logratios, labels), each (B,): log π(y|x) − log π_ref(y|x), and True where y is desirable.
    """
    policy, reference, labels = require(stats, loss, "policy_logps", "reference_logps", "labels")
    return policy - reference, labels.bool()


def rewards_by_label(rewards: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached (B,) rewards as :class:`~alignkit.losses.base.LossOutput` holds them for unpaired examples:
    the desirable ones' in the first tensor, the undesirable ones' in the second, 0 elsewhere."""
    rewards = rewards.detach()
    zero = torch.zeros_like(rewards)
    return torch.where(labels, rewards, zero), torch.where(labels, zero, rewards)
