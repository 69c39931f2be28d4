"""The recipe's `eval:` section: what is measured after training."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from alignkit.config_base import SEED_MAX, StrictConfig
from alignkit.eval.judges.base import DEFAULT_MAX_INVALID_FRACTION
from alignkit.eval.judges.keys import check_api_key_env
from alignkit.models.sampling import Sampling

__all__ = [
    "BASELINES",
    "Baseline",
    "EvalConfig",
    "JudgeConfig",
    "LocalJudgeConfig",
    "NoJudge",
    "OpenAIJudgeConfig",
    "RewardJudgeConfig",
]


class _Strict(StrictConfig):
    """Strict and finite (see :class:`alignkit.config_base.StrictConfig`)."""


# Every judge's limit on invalid verdicts (eval.judge.max_invalid_fraction).
_MaxInvalidFraction = Annotated[float, Field(
    ge=0, le=1,
    description="The evaluation fails (no win rate) when more than this share of the verdicts is invalid; with "
    "no valid verdict it always fails.",
)]


# What a judge's position bias may reach before the report warns that its verdicts cannot be trusted.
_MaxFlipRate = Annotated[float, Field(
    ge=0, le=1,
    description="Warn when more than this share of the pairs changes verdict when the two responses swap places "
    "(a coin-flip judge flips half of them).",
)]
_MaxSameVerdictRate = Annotated[float, Field(
    gt=0, le=1,
    description="Warn when one answer (A, B or tie) is at least this share of the judge's verdicts: a near-constant judge.",
)]


class _JudgeChecks(_Strict):
    """What every judge shares: when its verdicts fail the evaluation, and when the report warns about them."""

    max_invalid_fraction: _MaxInvalidFraction = DEFAULT_MAX_INVALID_FRACTION
    max_flip_rate: _MaxFlipRate = 0.4
    max_same_verdict_rate: _MaxSameVerdictRate = 0.95


class NoJudge(_Strict):
    """No pairwise judging (the default)."""

    kind: Literal["none"] = Field("none", description="No judge: no win rate is computed.")


class LocalJudgeConfig(_JudgeChecks):
    """A local causal LM reads both responses and is asked which is better.

    ``verdict: logprob`` reads the judge's next-token probabilities of "A" and "B" after the judge prompt
    and averages them over both orders (deterministic, never unparseable, and usable with small models whose
    raw answer hardly depends on the responses); ``verdict: generate`` lets it write its answer, which is
    parsed like an HTTP judge's.
    """

    kind: Literal["local"] = Field(description="A local transformers model as the judge.")
    model: str = Field(description="Judge model: local folder, Hub id or alias (e.g. smollm2-135m-instruct).")
    tokenizer: str | None = Field(None, description="Judge tokenizer; default: the judge model's own.")
    batch_size: int = Field(4, ge=1, description="Judge prompts per forward pass.")
    max_prompt_tokens: int = Field(1024, ge=16, description="Judge prompts longer than this are cut from the left.")
    verdict: Literal["logprob", "generate"] = Field(
        "logprob",
        description="logprob: P(A) and P(B) of the next token, averaged over both orders; generate: greedy "
        "text, parsed for its answer.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Tokens the judge may write with verdict: generate.")


class OpenAIJudgeConfig(_JudgeChecks):
    """Any OpenAI-compatible ``/v1/chat/completions`` server as the judge (``alignkit serve`` included)."""

    # A key pasted into api_key_env must not come back in an error message.
    model_config = ConfigDict(hide_input_in_errors=True)  # merged with the strict settings of the base

    kind: Literal["openai"] = Field(description="A chat-completions server as the judge.")
    base_url: str = Field(description="Server root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent with every request.")
    api_key_env: Annotated[str | None, AfterValidator(check_api_key_env)] = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (the key itself never goes in a "
        "recipe, a log or the cache; a value that looks like a key is refused); null sends no key.",
    )
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one attempt may take as a whole (connecting, headers and body).")
    max_retries: int = Field(4, ge=0, description="Retries of a request after a 5xx, 429, timeout or lost connection.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles on every retry.")
    max_tokens: int = Field(16, ge=1, description="Tokens the judge may answer with.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0 = its most likely answer).")
    cache: bool = Field(True, description="Keep verdicts on disk so that a rerun sends no request twice.")


class RewardJudgeConfig(_JudgeChecks):
    """The response with the higher reward wins: a registered reward function or a reward model folder."""

    kind: Literal["reward"] = Field(description="A reward as the judge.")
    reward: str | None = Field(None, description="Registered reward function, e.g. vader_sentiment.")
    model: str | None = Field(None, description="Folder of an alignkit reward model (a run's model/ folder).")
    batch_size: int = Field(8, ge=1, description="Texts per reward-model forward pass.")

    @model_validator(mode="after")
    def _one_source(self) -> RewardJudgeConfig:
        if (self.reward is None) == (self.model is None):
            raise ValueError("eval.judge: set exactly one of 'reward' (a registered function) or 'model' (a folder)")
        return self


# base: the untuned model; reference: the model training kept close to (the SFT model when SFT is on);
# chosen: the dataset's chosen response.
Baseline = Literal["base", "reference", "chosen"]
BASELINES: tuple[str, ...] = ("base", "reference", "chosen")
_REFERENCE_ONLY: list[Baseline] = ["reference"]

JudgeConfig = Annotated[
    NoJudge | LocalJudgeConfig | OpenAIJudgeConfig | RewardJudgeConfig, Field(discriminator="kind")
]


class EvalConfig(StrictConfig):
    """Reward and KL of the tuned policy against the reference on held-out prompts, and a judged win rate.

    Generation samples `samples_per_prompt` completions per prompt from both the reference (before) and
    the tuned policy (after); the reward is a registered reward function and KL(policy || reference) is
    the sample-based sequence-sum estimate in nats. With a `judge`, one completion of the policy per
    prompt is compared with each of the `baselines`', in both orders.
    """

    reward: str | None = Field(None, description="Registered reward function, e.g. vader_sentiment; null skips reward/KL.")
    num_prompts: int = Field(64, ge=1, description="Held-out prompts to evaluate on.")
    samples_per_prompt: int = Field(2, ge=1, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, description="Completions generated (and scored for KL) per batch.")
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="Sampling seed, shared by the before and after evaluations.")
    every: int | None = Field(
        None, ge=1,
        description="Also evaluate reward and KL every N optimizer steps of the preference stage (same prompts "
        "and sampling seed), so one run draws a curve on the reward-versus-KL frontier; null: only after "
        "training. Offline recipes, one process.",
    )
    judge: JudgeConfig = Field(
        default_factory=NoJudge,
        description="Pairwise judge of policy versus baseline: {kind: none | local | openai | reward, ...}.",
    )
    baselines: list[Baseline] = Field(
        default_factory=lambda: _REFERENCE_ONLY.copy(), min_length=1,
        description="What the policy is judged against, each in its own report section: base (the untuned "
        "model), reference (the model training kept close to: the SFT model when SFT is on), chosen (the "
        "dataset's chosen responses). The old single `baseline: X` still reads as `baselines: [X]`.",
    )
    agreement_pairs: int | None = Field(
        None, ge=0,
        description="Held-out labelled pairs the judge also compares (chosen against rejected, both orders) to "
        "measure how often it agrees with the dataset's label; default eval.num_prompts, 0 skips.",
    )

    @model_validator(mode="before")
    @classmethod
    def _single_baseline(cls, data: Any) -> Any:
        """``baseline: X`` (one baseline, the old field) reads as ``baselines: [X]``."""
        if not isinstance(data, dict) or "baseline" not in data:
            return data
        data = dict(data)
        old = data.pop("baseline")
        if "baselines" in data and data["baselines"] != [old]:
            raise ValueError(f"eval.baseline ({old!r}) is the old single-baseline field and disagrees with "
                             f"eval.baselines ({data['baselines']!r}): set only eval.baselines, e.g. "
                             f"eval.baselines=[{old}]")
        data["baselines"] = [old]
        return data

    @model_validator(mode="after")
    def _curve_needs_a_reward(self) -> EvalConfig:
        if self.every is not None and self.reward is None:
            raise ValueError("eval.every evaluates reward and KL along training: set eval.reward too")
        return self

    @model_validator(mode="after")
    def _distinct_baselines(self) -> EvalConfig:
        repeated = sorted({b for b in self.baselines if self.baselines.count(b) > 1})
        if repeated:
            raise ValueError(f"eval.baselines names {', '.join(repeated)} more than once")
        return self

    @property
    def sampling(self) -> Sampling:
        """The section's sampling settings, shared by the reward/KL evaluation and the judged samples."""
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        samples_per_prompt=self.samples_per_prompt, batch_size=self.batch_size, seed=self.seed)
