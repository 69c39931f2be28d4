"""The recipe's `eval:` section: what is measured after training."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EvalConfig"]


class EvalConfig(BaseModel):
    """Reward and KL of the tuned policy against the reference on held-out prompts.

    Generation samples `samples_per_prompt` completions per prompt from both the reference (before) and
    the tuned policy (after); the reward is a registered reward function and KL(policy || reference) is
    the sample-based sequence-sum estimate in nats.
    """

    model_config = ConfigDict(extra="forbid")

    reward: str | None = Field(None, description="Registered reward function, e.g. vader_sentiment; null skips reward/KL.")
    num_prompts: int = Field(64, ge=1, description="Held-out prompts to evaluate on.")
    samples_per_prompt: int = Field(2, ge=1, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, description="Completions generated (and scored for KL) per batch.")
    seed: int = Field(1234, description="Sampling seed, shared by the before and after evaluations.")
