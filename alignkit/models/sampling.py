"""The sampling settings of a generation call, as one value (no torch import, so configs can build it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["GREEDY_BELOW_TEMPERATURE", "Sampling"]

# A temperature below this samples greedily. logits / T overflows for a tiny T (1e-300 gives inf, then NaN
# probabilities); long before that softmax(logits / T) is the argmax: a logit gap of 1e-3 already has odds
# of e^-100 at T = 1e-5.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled; one value shared by evaluation, judging, pair generation and rollouts.

    Attributes:
        max_new_tokens: the most tokens sampled per completion (EOS included).
        temperature: softmax temperature; 0 (or below :data:`GREEDY_BELOW_TEMPERATURE`) for greedy.
        top_p: nucleus mass in (0, 1].
        samples_per_prompt: completions per prompt (K).
        batch_size: rows (completions, not prompts) generated per ``generate`` call.
        seed: sampling seed.
        use_chat_template: None = use the tokenizer's chat template when it has one.
        continuous_batching: replace a finished row by a waiting prompt at once (alignkit.models.continuous)
            instead of decoding one batch after the other; the completions are the same up to float rounding
            (another batch shape can move a draw across a CDF boundary, as another batch size does). Off by
            default: 1.08-1.10x the tokens/s on a chat workload on 2 CPU cores, no gain where rows end together
            (benchmarks/RESULTS_continuous_batching.md), and turning it on changes seeded results.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_prompt: int = 1
    batch_size: int = 16
    seed: int = 0
    use_chat_template: bool | None = None
    continuous_batching: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def but(self, **changes: Any) -> Sampling:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
