"""The sections of an online recipe: prompts, the online objective (rollouts, reward, KL, anchor, WARP),
and the optimisation. Every model is strict (an unknown key is an error) and every field documented."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignkit.config_base import SEED_MAX, StrictConfig
from alignkit.models.sampling import Sampling
from alignkit.train.config import OptimizerConfig

__all__ = [
    "AnchorConfig",
    "InlinePrompts",
    "KLControlConfig",
    "OnlineConfig",
    "OnlineTrainConfig",
    "PromptsConfig",
    "SentimentPrompts",
    "WarpConfig",
]


class _Strict(StrictConfig):
    """Strict and finite (see :class:`alignkit.config_base.StrictConfig`)."""


class SentimentPrompts(_Strict):
    """The project's neutral prompts of the controlled-sentiment task (train and held-out splits)."""

    kind: Literal["sentiment"] = Field(description="Built-in sentiment prompts (alignkit.data.sentiment).")
    num_prompts: int | None = Field(None, ge=1, description="Training prompts; null: the whole train split.")
    num_eval_prompts: int = Field(64, ge=1, description="Held-out prompts for the final evaluation and the front.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Which prompts are drawn (the order of training is the run's seed).")


class InlinePrompts(_Strict):
    """Prompts written in the recipe."""

    kind: Literal["inline"] = Field(description="Prompts listed in the recipe.")
    train: list[str] = Field(min_length=1, description="Training prompts.")
    eval: list[str] = Field(min_length=1, description="Held-out prompts for evaluation.")


PromptsConfig = Annotated[SentimentPrompts | InlinePrompts, Field(discriminator="kind")]


class AnchorConfig(_Strict):
    """What the KL penalty is measured against."""

    kind: Literal["initial", "ema"] = Field(
        "initial", description="initial: the frozen weights the run started from; ema: a moving average of the policy."
    )
    ema_rate: float = Field(0.01, gt=0, le=1, description="mu of theta_anchor <- (1 - mu) theta_anchor + mu theta (ema only).")


class KLControlConfig(_Strict):
    """Fixed beta, or beta adapted toward a target KL (Ziegler et al. 2019)."""

    kind: Literal["fixed", "adaptive"] = Field("fixed", description="fixed: beta stays; adaptive: steer toward target.")
    target: float | None = Field(None, gt=0, description="Target KL to the anchor in nats per completion (adaptive).")
    k_beta: float = Field(0.1, gt=0, lt=5, description="Gain of the adaptive rule beta <- beta (1 + k_beta e).")

    @model_validator(mode="after")
    def _target_when_adaptive(self) -> KLControlConfig:
        if self.kind == "adaptive" and self.target is None:
            raise ValueError("kl_control.target is required when kind is 'adaptive'")
        return self


class WarpConfig(_Strict):
    """WARP: iterations of M runs merged by SLERP, LITI between iterations, then the interpolation front."""

    iterations: int = Field(1, ge=1, description="I: merge-and-restart rounds.")
    runs: int = Field(2, ge=1, description="M: runs per iteration, differing only in prompt order (seed).")
    liti_eta: float = Field(0.5, ge=0, le=1, description="eta of theta_init <- (1 - eta) theta_init + eta theta_slerp.")
    front_etas: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="Grid of eta for the final front (1 - eta) theta_sft + eta theta_final, each evaluated.",
    )
    eps: float = Field(1e-6, gt=0, description="Norm / sin(angle) below which SLERP falls back to a linear mix.")


class OnlineConfig(_Strict):
    """The online objective: sample, reward, penalise KL to the anchor, leave-one-out policy gradient."""

    reward: str | None = Field(None, description="Registered reward function, e.g. vader_sentiment.")
    reward_model: str | None = Field(None, description="Folder of an alignkit reward model (instead of `reward`).")
    reward_batch_size: int = Field(8, ge=1, description="Texts per reward-model forward pass.")
    samples_per_prompt: int = Field(4, ge=1, description="k completions per prompt (1: batch-mean REINFORCE baseline).")
    max_new_tokens: int = Field(32, ge=1, description="Tokens sampled per completion (EOS included).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; 1 samples the policy itself, as the KL estimate needs.")
    generation_batch_size: int = Field(64, ge=1, description="Completions generated per `generate` call.")
    update_batch_size: int | None = Field(
        None, ge=1, description="Completions per forward/backward of the update; default all of the step's at once."
    )
    beta: float = Field(0.05, ge=0, description="KL coefficient (the starting value when adaptive).")
    kl_control: KLControlConfig = Field(default_factory=KLControlConfig, description="Fixed or adaptive beta.")
    anchor: AnchorConfig = Field(default_factory=AnchorConfig, description="The KL anchor.")
    warp: WarpConfig | None = Field(None, description="Run WARP (iterations of merged runs) instead of one run.")

    @property
    def sampling(self) -> Sampling:
        """The rollout sampling settings (top_p 1: the samples follow the policy; the seed is set per step)."""
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                        samples_per_prompt=self.samples_per_prompt, batch_size=self.generation_batch_size)

    @model_validator(mode="after")
    def _one_reward(self) -> OnlineConfig:
        if (self.reward is None) == (self.reward_model is None):
            raise ValueError("online: set exactly one of 'reward' (a registered function) or 'reward_model' (a folder)")
        if self.kl_control.kind == "adaptive" and self.beta <= 0:
            raise ValueError("online.beta must be > 0 with an adaptive kl_control (the rule is multiplicative)")
        if self.warp is not None and self.anchor.kind != "ema":
            raise ValueError("online.warp needs anchor.kind 'ema' (each WARP run has its own EMA anchor)")
        return self


class OnlineTrainConfig(OptimizerConfig):
    """Optimisation of the online stage: one optimizer step per batch of rollouts."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per update (each sampled samples_per_prompt times).")
    max_steps: int = Field(100, ge=1, description="Updates per run (per WARP run).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to `lr`.")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null disables.")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, ...")
    log_every: int = Field(1, ge=1, description="Write metrics every N updates.")
    save_every: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N updates (always at the end of a run)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="Resumable checkpoints kept per run.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seed of prompt order and sampling; default: the recipe's seed.")
