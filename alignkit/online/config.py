"""The sections of an online recipe: prompts, the online objective (rollouts, reward, KL, anchor, WARP),
and the optimisation. Every model is strict (an unknown key is an error) and every field documented."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from alignkit.config_base import SEED_MAX, FieldError, StrictConfig
from alignkit.models.sampling import Sampling
from alignkit.online.parts import (
    ADVANTAGES,
    AGGREGATIONS,
    CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PartSpec,
)
from alignkit.online.presets import PRESETS, PresetName
from alignkit.online.prompts import (
    HFDatasetPrompts,
    HHRLHFPrompts,
    InlinePrompts,
    JsonlPrompts,
    SentimentPrompts,
)
from alignkit.online.rollout_config import AsyncConfig, RolloutConfig
from alignkit.online.verifiable_prompts import GSM8KPrompts, ReasoningGymPrompts
from alignkit.registry import Registry, RegistryError
from alignkit.train.config import OptimizerConfig

__all__ = [
    "ALGORITHMS",
    "AccuracyConfig",
    "AnchorConfig",
    "AsyncConfig",
    "GRPOConfig",
    "InlinePrompts",
    "KLConfig",
    "KLControlConfig",
    "OnlineConfig",
    "OnlineTrainConfig",
    "PPOConfig",
    "PartChoice",
    "RewardTerm",
    "BUILTIN_PROMPTS",
    "PromptsConfig",
    "RolloutConfig",
    "SentimentPrompts",
    "ValueConfig",
    "WarpConfig",
]


class _Strict(StrictConfig):
    """Strict and finite (see :class:`alignkit.config_base.StrictConfig`)."""


PromptsConfig = Annotated[SentimentPrompts | InlinePrompts | JsonlPrompts | HHRLHFPrompts | HFDatasetPrompts
                          | GSM8KPrompts | ReasoningGymPrompts, Field(discriminator="kind")]
BUILTIN_PROMPTS: tuple[type[BaseModel], ...] = get_args(get_args(PromptsConfig)[0])  # the union's members


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


ALGORITHMS = tuple(PRESETS)


class PartChoice(BaseModel):
    """A registered part by name, with its settings beside the name (``{name: ppo_clip, clip_low: 0.1}``, or
    just ``ppo_clip``); the settings are validated by the part's own config."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(description="The registered part (docs/online_parts.md lists them with their settings).")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def settings(self) -> dict[str, Any]:
        """Everything but the name."""
        return dict(self.model_extra or {})


class RewardTerm(PartChoice):
    """One reward of a weighted combination, with its settings beside the name
    (``{name: exact_match, weight: 1.0, extract: gsm8k}``, or just ``exact_match``); ``settings`` are the
    reward function's keyword arguments."""

    name: str = Field(description="A registered reward function (docs/online.md lists the built-in ones).")
    weight: float = Field(1.0, description="Its weight in the sum.")


class AccuracyConfig(_Strict):
    """Accuracy on the held-out problems of a verifiable task, before and after training: pass@k from n samples."""

    reward: RewardTerm = Field(description="The reward that decides correctness, with its settings (e.g. "
                               "{name: reasoning_gym} or {name: exact_match, extract: gsm8k}).")
    threshold: float = Field(1.0, description="A completion is correct when the reward gives it at least this.")
    num_problems: int = Field(200, ge=1, description="Held-out problems measured (the first N of the held-out "
                              "prompts).")
    samples: int = Field(8, ge=1, description="n: completions sampled per problem.")
    ks: list[int] = Field(default_factory=lambda: [1, 8], min_length=1, description="The k of each pass@k "
                          "reported (1 <= k <= samples), estimated without bias from the n samples.")
    max_new_tokens: int = Field(256, ge=1, description="Tokens sampled per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy, then only pass@1 is "
                               "meaningful).")
    batch_size: int = Field(32, ge=1, description="Completions generated per batch.")
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="Sampling seed, the same before and after training.")

    @model_validator(mode="after")
    def _ks_within_samples(self) -> AccuracyConfig:
        bad = [k for k in self.ks if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(f"accuracy.ks: {bad} outside 1..samples ({self.samples}); pass@k needs k <= n samples")
        return self

    @property
    def sampling(self) -> Sampling:
        """The sampling of every measurement (n per problem, the same seed before and after)."""
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                        samples_per_prompt=self.samples, batch_size=self.batch_size, seed=self.seed)


class KLConfig(_Strict):
    """The KL penalty to the anchor: which per-token estimator, and whether it lowers the reward or joins the loss."""

    estimator: str = Field("k1", description="A registered KL estimator: k1 (log-ratio), k2 (half its square) or "
                           "k3 (exp(-d) + d - 1).")
    placement: Literal["reward", "loss", "none"] = Field(
        "reward", description="reward: the reward minus coef x KL (per sequence, or per token for estimators that "
        "use token rewards); loss: coef x the per-token KL added to each token's loss; none: no KL term.")
    coef: float | None = Field(None, ge=0, description="The KL weight; null: online.beta (adapted by "
                               "online.kl_control when adaptive).")
    importance_weighted: bool = Field(
        False, description="placement loss only: weigh each token's KL by the detached ratio pi / pi_old, which "
        "makes it unbiased for KL(pi || anchor) on the later passes over a rollout (sampled from pi_old).")

    @model_validator(mode="after")
    def _weighted_in_loss(self) -> KLConfig:
        if self.importance_weighted and self.placement != "loss":
            raise ValueError("online.kl.importance_weighted applies to placement 'loss' only")
        return self


class DynamicSamplingConfig(_Strict):
    """DAPO's dynamic sampling: a prompt group whose rewards all agree is dropped and its place sampled again
    from another prompt, until every group has a signal or the cap of extra rounds is reached
    (:mod:`alignkit.online.dynamic_sampling`). Logged per step: dropped_groups, uniform_groups, extra_rounds."""

    enabled: bool = Field(False, description="Drop and refill the groups whose k rewards are all equal (needs "
                          "online.samples_per_prompt >= 2).")
    max_extra_rounds: int = Field(4, ge=1, description="At most this many extra sampling rounds per step; a "
                                  "position still uniform then keeps its last group (advantage 0).")


class ValueConfig(_Strict):
    """The value model of advantage estimators that need one (gae)."""

    value_model: Literal["policy_head", "separate"] = Field(
        "policy_head", description="policy_head: a scalar head on the policy's last hidden state; separate: a "
        "value model of its own (see value_init).")
    value_init: str = Field("policy", description="separate only: 'policy' or the folder of an alignkit reward model.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in policy loss + vf_coef * value loss.")
    clip_eps_value: float = Field(0.2, gt=0, description="Values move at most this far from their rollout values.")

    @model_validator(mode="after")
    def _value_init_needs_separate(self) -> ValueConfig:
        if self.value_model == "policy_head" and self.value_init != "policy":
            raise ValueError("online.value.value_init: a reward-model initialisation needs value_model 'separate' "
                             "(the policy_head shares the policy's body)")
        return self


class PPOConfig(_Strict):
    """PPO (online.algorithm: ppo): a value model, per-token KL rewards, GAE, clipped policy and value losses."""

    value_model: Literal["policy_head", "separate"] = Field(
        "policy_head",
        description="policy_head: a scalar linear head on the policy's last hidden state, trained with the policy "
        "(the value loss reaches the shared body); separate: a value model of its own (a copy of the policy's "
        "decoder, or a reward model's body, see value_init) with a scalar head. Neither is saved into model/.",
    )
    value_init: str = Field(
        "policy",
        description="separate only: 'policy' (a copy of the policy's decoder, trainable where the policy is, with a "
        "zero-initialised head) or the folder of an alignkit reward model (its body and score layer, all trainable; "
        "it must share the policy's tokenizer).",
    )
    epochs: int = Field(4, ge=1, description="Passes over each rollout (PPO epochs).")
    minibatch_size: int | None = Field(
        None, ge=1,
        description="Completions per optimizer step, over all processes; must divide train.prompts_per_step x "
        "online.samples_per_prompt. null: the whole rollout (one optimizer step per epoch).",
    )
    clip_eps: float = Field(0.2, gt=0, description="epsilon of the clipped ratio clip(rho, 1 - eps, 1 + eps).")
    clip_eps_value: float = Field(0.2, gt=0, description="Values move at most this far from their rollout values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in policy loss + vf_coef * value loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the per-token rewards.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (0: one-step TD error, 1: Monte Carlo return).")
    whiten_advantages: bool = Field(
        True, description="Whiten the advantages over the whole rollout (every process's tokens) before the updates."
    )

    @model_validator(mode="after")
    def _value_init_needs_separate(self) -> PPOConfig:
        if self.value_model == "policy_head" and self.value_init != "policy":
            raise ValueError("online.ppo.value_init: a reward-model initialisation needs value_model 'separate' "
                             "(the policy_head shares the policy's body)")
        return self


class GRPOConfig(_Strict):
    """GRPO (online.algorithm: grpo): group-relative advantages, clipped token loss, KL as a loss or a penalty."""

    iterations: int = Field(1, ge=1, description="mu: optimizer steps on each rollout, each over the whole rollout.")
    clip_eps: float = Field(0.2, gt=0, description="epsilon of the clipped ratio clip(rho, 1 - eps, 1 + eps).")
    scale_rewards: bool = Field(
        True, description="Divide each group's centred rewards by their std (GRPO); false: Dr. GRPO (centred only)."
    )
    length_normalise: bool = Field(
        True, description="Each completion's loss is the mean over its tokens (GRPO); false: the sum over its tokens "
        "divided by online.max_new_tokens (Dr. GRPO)."
    )
    kl: Literal["loss", "reward"] = Field(
        "loss", description="loss: a k3 KL-to-the-anchor term in the loss, weighted by kl_coef; reward: the "
        "sequence reward penalised by beta KL as RLOO does (no KL term in the loss)."
    )
    kl_coef: float | None = Field(
        None, ge=0, description="kl: loss only: the weight of the k3 term; null: online.beta (adapted by "
        "online.kl_control when adaptive)."
    )

    @model_validator(mode="after")
    def _kl_coef_with_loss(self) -> GRPOConfig:
        if self.kl_coef is not None and self.kl != "loss":
            raise ValueError("online.grpo.kl_coef weighs the k3 loss term; with kl: reward the penalty is online.beta")
        return self


class OnlineConfig(_Strict):
    """The online objective: sample, reward, penalise KL to the anchor, and update the policy with an objective
    built from registered parts (an advantage, a policy loss, a loss aggregation, a KL term, a rollout
    correction), named at once by a preset (``algorithm``)."""

    # ``async`` is a Python keyword: the field is ``async_``, spelled ``async`` in recipes and saved recipes.
    model_config = ConfigDict(**_Strict.model_config, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    algorithm: PresetName = Field(
        "rloo",
        description="A preset that fills the part fields left out (alignkit/online/presets.py): rloo (leave-one-out "
        "baseline; k = 1: the batch mean), reinforce (batch-mean baseline), reinforce_pp, ppo (value model, GAE, "
        "clipped updates; online.ppo), grpo (group-normalised advantages, clipped updates; online.grpo), dr_grpo, "
        "dapo, gspo, cispo, gmpo. The expanded parts are printed and saved in the run's recipe.",
    )
    ppo: PPOConfig | None = Field(None, description="PPO settings (algorithm ppo only; defaults when omitted).")
    grpo: GRPOConfig | None = Field(None, description="GRPO settings (algorithms grpo and dr_grpo; defaults when "
                                    "omitted).")
    advantage: PartChoice | None = Field(None, description="The advantage estimator (a registered name and its "
                                         "settings); null: the preset's.")
    policy_loss: PartChoice | None = Field(None, description="The per-token policy loss; null: the preset's.")
    loss_aggregation: PartChoice | None = Field(None, description="How per-token losses become the loss; null: "
                                                "the preset's.")
    kl: KLConfig | None = Field(None, description="The KL term (estimator, placement, weight); null: the preset's.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus: coef x each token's entropy "
                                "is subtracted from its loss (0: off).")
    rollout_correction: PartChoice = Field(
        default_factory=lambda: PartChoice(name="none"),
        description="Importance weights for the gap between the sampler's and the trainer's log-probs: none, tis "
        "(truncated at cap), mis (tokens past cap dropped) or seq_mask (sequences past cap dropped), with cap.")
    epochs: int | None = Field(None, ge=1, description="Passes over each rollout (PPO epochs, GRPO iterations); "
                               "null: the preset's.")
    minibatch_size: int | None = Field(
        None, ge=1, description="Completions per optimizer step, over all processes (must divide the rollout); "
        "null: the preset's (for most, the whole rollout).")
    value: ValueConfig | None = Field(None, description="The value model, for an advantage that needs one (gae); "
                                      "null: the preset's, or defaults.")
    dynamic_sampling: DynamicSamplingConfig | None = Field(
        None, description="Drop the groups whose rewards all agree and sample their places again (DAPO); null: the "
        "preset's (on for dapo, off otherwise).")

    reward: str | None = Field(None, description="Registered reward function, e.g. vader_sentiment.")
    reward_model: str | None = Field(None, description="Folder of an alignkit reward model (instead of `reward`).")
    rewards: list[RewardTerm] | None = Field(
        None, min_length=1, description="A weighted sum of registered rewards (instead of `reward`), each with its "
        "settings, e.g. [{name: exact_match, weight: 1, extract: gsm8k}, {name: format, weight: 0.1}]; each "
        "component is logged as reward/<name>.")
    normalise_rewards: bool = Field(
        False, description="With `rewards`: normalise each reward within the completions of one prompt (minus "
        "the group's mean, over its standard deviation) before the weighted sum (GDPO).")
    true_reward: str | None = Field(
        None,
        description="A registered reward function measured on every rollout but never trained on (e.g. "
        "vader_sentiment next to a learned reward_model): logged as `true_reward` beside the proxy `reward`, "
        "reported in the final evaluation, and plotted against KL in plots/proxy_vs_true.png, so reward "
        "over-optimisation shows. null: off.",
    )
    reward_batch_size: int = Field(8, ge=1, description="Texts per reward-model forward pass.")
    reward_timeout_s: float = Field(
        300.0, gt=0, description="Seconds one call of `reward` or `true_reward` (one rollout's texts) may take; a "
        "reward that takes longer, raises or exits stops the run with an error naming it.",
    )
    samples_per_prompt: int = Field(4, ge=1, description="k completions per prompt (1: batch-mean REINFORCE baseline).")
    max_new_tokens: int = Field(32, ge=1, description="Tokens sampled per completion (EOS included).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer computes log-probs, ratios, entropies and the KL at it (softmax(logits / T): the distribution it samples), so T = 1 trains the model's own distribution.")
    generation_batch_size: int = Field(64, ge=1, description="Completions generated per `generate` call.")
    update_batch_size: int | None = Field(
        None, ge=1, description="Completions per forward/backward of the update; default all of the step's at once."
    )
    beta: float = Field(0.05, ge=0, description="KL coefficient (the starting value when adaptive).")
    kl_control: KLControlConfig = Field(default_factory=KLControlConfig, description="Fixed or adaptive beta.")
    anchor: AnchorConfig = Field(default_factory=AnchorConfig, description="The KL anchor.")
    warp: WarpConfig | None = Field(None, description="Run WARP (iterations of merged runs) instead of one run.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The engine that samples rollouts: "
                                   "local, or an inference server that receives the weights after every update.")
    async_: AsyncConfig = Field(default_factory=AsyncConfig, alias="async",
                                description="Sample the next rollout while the current one trains (max_staleness 1).")
    continuous_batching: bool = Field(
        False, description="Local rollouts: replace a finished row by a waiting prompt at once instead of decoding one "
        "batch after the other (the same completions up to float rounding; 1.08-1.10x the tokens/s on a chat "
        "workload on 2 CPU cores, benchmarks/RESULTS_continuous_batching.md).")

    @property
    def sampling(self) -> Sampling:
        """The rollout sampling settings (top_p 1: the samples follow the policy; the seed is set per step)."""
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                        samples_per_prompt=self.samples_per_prompt, batch_size=self.generation_batch_size,
                        continuous_batching=self.continuous_batching)

    @model_validator(mode="after")
    def _one_reward(self) -> OnlineConfig:
        if sum(x is not None for x in (self.reward, self.reward_model, self.rewards)) != 1:
            raise ValueError("online: set exactly one of 'reward' (a registered function), 'rewards' (a weighted "
                             "list of them) or 'reward_model' (a folder)")
        if self.rewards is not None and len({t.name for t in self.rewards}) != len(self.rewards):
            raise ValueError("online.rewards: each reward may appear once")
        if self.normalise_rewards and self.rewards is None:
            raise ValueError("online.normalise_rewards needs online.rewards (a weighted list of rewards)")
        if self.kl_control.kind == "adaptive" and self.beta <= 0:
            raise ValueError("online.beta must be > 0 with an adaptive kl_control (the rule is multiplicative)")
        if self.warp is not None and self.anchor.kind != "ema":
            raise ValueError("online.warp needs anchor.kind 'ema' (each WARP run has its own EMA anchor)")
        return self

    @field_validator("ppo", "grpo")
    @classmethod
    def _section_of_the_algorithm(cls, value: PPOConfig | GRPOConfig | None,
                                  info: ValidationInfo) -> PPOConfig | GRPOConfig | None:
        algorithm, name = info.data.get("algorithm"), info.field_name
        if value is not None and algorithm is not None and PRESETS[algorithm].section != name:
            raise ValueError(f"online.{name} is set but online.algorithm is {algorithm!r}; remove online.{name} "
                             f"or set an algorithm that reads it")
        return value

    @model_validator(mode="after")
    def _expand_the_preset(self) -> OnlineConfig:
        """Fill the sections and parts the recipe leaves out from the preset, and validate every part."""
        preset = PRESETS[self.algorithm]
        section = None
        if preset.section is not None:
            if getattr(self, preset.section) is None:
                setattr(self, preset.section, {"ppo": PPOConfig, "grpo": GRPOConfig}[preset.section]())
            section = getattr(self, preset.section)
        expanded = preset.expand(section)
        for name, registry in (("advantage", ADVANTAGES), ("policy_loss", POLICY_LOSSES),
                               ("loss_aggregation", AGGREGATIONS)):
            setattr(self, name, _resolved(name, registry, getattr(self, name), expanded[name]))
        self.rollout_correction = _resolved("rollout_correction", CORRECTIONS, self.rollout_correction, None)
        if self.kl is None:
            self.kl = KLConfig(**expanded["kl"])
        if self.kl.estimator not in KL_ESTIMATORS:
            raise FieldError(("kl", "estimator"), f"unknown KL estimator {self.kl.estimator!r}; registered: "
                             f"{', '.join(KL_ESTIMATORS.names())}", section="online")
        if self.epochs is None:
            self.epochs = expanded["epochs"]
        if self.minibatch_size is None:
            self.minibatch_size = expanded["minibatch_size"]
        if self.dynamic_sampling is None:
            self.dynamic_sampling = DynamicSamplingConfig(**expanded.get("dynamic_sampling", {}))
        if self.dynamic_sampling.enabled and self.samples_per_prompt < 2:
            raise ValueError("online.dynamic_sampling needs online.samples_per_prompt >= 2 (it compares the rewards "
                             "of each prompt's group)")
        if self.value is None and self.advantage_spec.needs_values:
            self.value = ValueConfig(**expanded.get("value", {}))
        min_group = int(self.advantage_spec.extra.get("min_group_size", 1))
        if self.samples_per_prompt < min_group:
            raise ValueError(f"online.advantage {self.advantage_spec.name} needs online.samples_per_prompt >= "
                             f"{min_group} (a group of one sample has advantage 0)")
        if self.async_.max_staleness > 0 and self.rollout_correction.name == "none":
            raise ValueError("online.async.max_staleness 1 trains on samples of the weights one update old: set "
                             "online.rollout_correction (tis, mis or seq_mask) to reweigh them")
        if self.async_.max_staleness > 0 and self.dynamic_sampling.enabled:
            raise ValueError("online.dynamic_sampling resamples from the current weights, which one step off-policy "
                             "(online.async.max_staleness 1) does not hold; use one of them")
        if self.kl.coef is not None and self.kl_control.kind == "adaptive":
            raise ValueError("online.kl.coef (online.grpo.kl_coef) fixes the KL weight, but online.kl_control is "
                             "adaptive; remove one (without a coef the adaptive beta weighs the KL)")
        return self

    @property
    def advantage_spec(self) -> PartSpec:
        """The registered advantage estimator (after validation)."""
        assert self.advantage is not None
        return ADVANTAGES.get(self.advantage.name)


def _resolved(field: str, registry: Registry[PartSpec], choice: PartChoice | None,
              preset: dict[str, Any] | None) -> PartChoice:
    """The part the recipe chose (its settings over the preset's when it names the same part), or the
    preset's, with every setting validated and its defaults filled in."""
    if choice is None:
        assert preset is not None
        choice = PartChoice(**preset)
    elif preset is not None and preset["name"] == choice.name:
        choice = PartChoice(**{**preset, **choice.settings, "name": choice.name})
    try:
        spec = registry.get(choice.name)
        cfg = spec.config.model_validate(choice.settings)
    except RegistryError as err:
        raise FieldError((field, "name"), str(err), section="online") from None
    except ValidationError as err:
        errors = err.errors()
        if len(errors) == 1:  # at the setting's own line (or override)
            raise FieldError((field, *errors[0]["loc"]), f"{errors[0]['msg']} ({choice.name})",
                             section="online") from None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        raise FieldError((field,), f"{choice.name}: {problems}", section="online") from None
    return PartChoice(name=choice.name, **cfg.model_dump(mode="json"))


class OnlineTrainConfig(OptimizerConfig):
    """Optimisation of the online stage: one update per batch of rollouts (RLOO, REINFORCE: one optimizer step;
    PPO: epochs x minibatches; GRPO: iterations)."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per update (each sampled samples_per_prompt times).")
    max_steps: int = Field(100, ge=1, description="Updates (rollouts) per run (per WARP run).")
    warmup_steps: int = Field(
        0, ge=0, description="Linear warm-up from 0 to `lr`, in updates (the schedule itself counts optimizer steps: "
        "PPO and GRPO take several per update, and their warm-up and decay are scaled to match)."
    )
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null disables.")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, ...")
    log_every: int = Field(1, ge=1, description="Write metrics every N updates.")
    save_every: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N updates (always at the end of a run)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="Resumable checkpoints kept per run.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seed of prompt order and sampling; default: the recipe's seed.")
