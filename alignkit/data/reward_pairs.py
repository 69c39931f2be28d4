"""From K scored completions per prompt to preference pairs: the best versus the worst.

Pure bookkeeping, no model: :func:`score_completions` asks a reward for every completion,
:func:`best_versus_worst` keeps, for each prompt whose reward gap is large enough, the first best
completion as chosen and the last worst one as rejected. :class:`RewardPairs` is what
:func:`alignkit.data.sentiment.build_reward_pairs` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.data.types import DropReport, PreferenceExample
from alignkit.lazy import lazy_module
from alignkit.models.rewards import RewardFn, require_finite

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")

__all__ = ["SMALL_GAP", "PickedPairs", "RewardPairs", "best_versus_worst", "score_completions"]

# Drop reason used in the pairs' DropReport.
SMALL_GAP = "best-worst reward gap not above min_reward_gap"


@dataclass
class RewardPairs:
    """Preference pairs built from rewards, with what it took to build them.

    Attributes:
        pairs: best-versus-worst pairs, in prompt order.
        drops: prompts seen and prompts dropped (reason ``SMALL_GAP``).
        reward_name: the reward that scored the completions.
        mean_reward: mean reward over all sampled completions.
        mean_chosen_reward: mean reward of the kept chosen responses.
        mean_rejected_reward: mean reward of the kept rejected responses.
        mean_gap: mean chosen - rejected reward over kept pairs.
        from_cache: whether the completions were read from the cache rather than generated.
        seconds: wall time (generation + scoring, or loading + scoring).
        cache_path: the cache file, or None when caching was off.
        rewards: (P, K) reward of every completion, for inspection.
    """

    pairs: list[PreferenceExample]
    drops: DropReport
    reward_name: str
    mean_reward: float
    mean_chosen_reward: float
    mean_rejected_reward: float
    mean_gap: float
    from_cache: bool
    seconds: float
    cache_path: Path | None = None
    rewards: list[list[float]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        source = "cached" if self.from_cache else "generated"
        return (
            f"{len(self.pairs)} pairs from {self.drops.seen} prompts ({source}, {self.seconds:.1f}s); "
            f"{self.drops.dropped} dropped for a small reward gap; {self.reward_name}: "
            f"chosen {self.mean_chosen_reward:+.3f}, rejected {self.mean_rejected_reward:+.3f}, "
            f"gap {self.mean_gap:.3f}, all samples {self.mean_reward:+.3f}"
        )


def _as_example(prompt: str, chosen: str, rejected: str, chat: bool) -> PreferenceExample:
    # With a chat template the pair is a conversation, so training renders it exactly as it was
    # generated (user turn + assistant header); otherwise plain text continues the raw prompt.
    if chat:
        user = [{"role": "user", "content": prompt}]
        return PreferenceExample(
            user, [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        )
    return PreferenceExample(prompt, chosen, rejected)


def score_completions(reward_fn: RewardFn, reward_name: str, texts: list[list[str]]) -> np.ndarray:
    """(P, K) rewards of the completion texts."""
    flat = [t for group in texts for t in group]
    scores = np.asarray(require_finite(reward_name, reward_fn(flat)), dtype=np.float64)
    if scores.shape != (len(flat),):
        raise ValueError(f"reward {reward_name!r} returned {scores.shape} values for {len(flat)} texts")
    return scores.reshape(len(texts), -1)  # (P, K)


@dataclass
class PickedPairs:
    """Best-versus-worst pairs and the rewards of their responses (one entry per kept prompt)."""

    pairs: list[PreferenceExample] = field(default_factory=list)
    drops: DropReport = field(default_factory=DropReport)
    chosen_rewards: list[float] = field(default_factory=list)
    rejected_rewards: list[float] = field(default_factory=list)

    def _mean(self, values: Sequence[float] | np.ndarray) -> float:
        return float(np.mean(values)) if self.pairs else float("nan")

    @property
    def mean_chosen_reward(self) -> float:
        """Mean reward of the chosen responses; NaN when no pair was kept."""
        return self._mean(self.chosen_rewards)

    @property
    def mean_rejected_reward(self) -> float:
        """Mean reward of the rejected responses; NaN when no pair was kept."""
        return self._mean(self.rejected_rewards)

    @property
    def mean_gap(self) -> float:
        """Mean chosen - rejected reward; NaN when no pair was kept."""
        return self._mean(np.subtract(self.chosen_rewards, self.rejected_rewards))


def best_versus_worst(prompts: Sequence[str], texts: list[list[str]], scores: np.ndarray, *,
                       min_reward_gap: float, chat: bool) -> PickedPairs:
    """The first best and the last worst completion of each prompt whose reward gap is above ``min_reward_gap``."""
    picked = PickedPairs()
    k = scores.shape[1]
    for i, prompt in enumerate(prompts):
        picked.drops.seen += 1
        # First maximum and last minimum: distinct samples even when all K rewards tie.
        best, worst = int(scores[i].argmax()), k - 1 - int(scores[i][::-1].argmin())
        if scores[i, best] - scores[i, worst] <= min_reward_gap:
            picked.drops.drop(SMALL_GAP, f"prompt {i}")
            continue
        picked.pairs.append(_as_example(prompt, texts[i][best], texts[i][worst], chat))
        picked.chosen_rewards.append(scores[i, best])
        picked.rejected_rewards.append(scores[i, worst])
    return picked
