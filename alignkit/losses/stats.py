"""The per-sequence statistics of one batch: what a loss reads (:class:`PreferenceStats`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from alignkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = ["PreferenceStats"]

# Fields that hold samples of a batch-level estimate rather than one value per example: selecting
# examples (:meth:`PreferenceStats.examples`) keeps them whole.
_SAMPLE_FIELDS = ("policy_mismatched_logps", "reference_mismatched_logps")


@dataclass
class PreferenceStats:
    """Per-sequence statistics of one batch of B examples. Every tensor has shape (B,) unless noted.

    Attributes:
        policy_chosen_logps: sum of the policy's log-probs over the chosen response tokens.
        policy_rejected_logps: the same for the rejected response.
        chosen_lengths: number of chosen response tokens (float, >= 1).
        rejected_lengths: number of rejected response tokens.
        reference_chosen_logps: the reference model's summed log-probs; None unless the loss, with its
            config, needs a reference (:meth:`LossSpec.reads_reference`).
        reference_rejected_logps: the same for the rejected response.
        chosen_scores: reward-model score of the chosen sequence (batch kind ``SCORES``).
        rejected_scores: reward-model score of the rejected sequence.
        scores: (B, K) reward-model scores of K candidates (batch kind ``KWAY``).
        best_index: (B,) long, index of the preferred candidate in ``scores``.
        policy_logps: (batch kind ``UNPAIRED``) the policy's summed log-prob of each example's one response.
        reference_logps: the same under the reference (None unless ``needs_reference``).
        lengths: response token counts of the unpaired responses.
        labels: (B,) bool, True where the response is desirable (thumbs up).
        policy_mismatched_logps: (M,) policy log-probs of mismatched prompt–completion pairs (each
            completion after another example's prompt), the samples of KTO's reference point
            (``needs_mismatched``). Not per example: :meth:`examples` keeps them whole.
        reference_mismatched_logps: (M,) the same under the reference.
    """

    policy_chosen_logps: torch.Tensor | None = None
    policy_rejected_logps: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None
    chosen_scores: torch.Tensor | None = None
    rejected_scores: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    policy_logps: torch.Tensor | None = None
    reference_logps: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    policy_mismatched_logps: torch.Tensor | None = None
    reference_mismatched_logps: torch.Tensor | None = None

    def to_fp32(self) -> PreferenceStats:
        """A copy with every floating tensor in float32 (losses are computed in fp32 under bf16/fp16)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.float()
            out[f.name] = value
        return PreferenceStats(**out)

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name not in _SAMPLE_FIELDS:
                return int(value.shape[0])
        raise ValueError("PreferenceStats holds no per-example tensors")

    def examples(self, index: slice | torch.Tensor) -> PreferenceStats:
        """The statistics of some examples (``index`` into the batch); batch-level samples stay whole."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if value is None or f.name in _SAMPLE_FIELDS else value[index]
        return PreferenceStats(**out)
