"""The recipe's ``data:`` section: where preference pairs come from and how they are cut to length."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from alignkit.config_base import SEED_MAX, StrictConfig, dump_plugin_kind, validate_plugin_kind
from alignkit.data.truncation import PromptTruncation
from alignkit.registry import Registry

__all__ = [
    "DataConfig",
    "HFDatasetSource",
    "HHRLHFSource",
    "HH_SUBSETS",
    "JsonlSource",
    "KWayJsonlSource",
    "SentimentSource",
    "SourceConfig",
    "UnpairedHFDatasetSource",
    "UnpairedJsonlSource",
]

# The preference subsets of Anthropic's hh-rlhf repository (red-team-attempts has another format).
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
HHSubset = Literal["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]


class _Strict(StrictConfig):
    model_config = ConfigDict(frozen=True)


class _Columns(_Strict):
    """Column names shared by the row-based sources (jsonl files and datasets)."""

    prompt_field: str = Field(
        "prompt",
        description="Column holding the prompt: text, or a list of {role, content} messages. When the "
        "column is absent and chosen/rejected are full conversations, the prompt is their shared leading "
        "messages.",
    )
    chosen_field: str = Field(
        "chosen", description="Column holding the preferred response: text, or a list of messages."
    )
    rejected_field: str = Field(
        "rejected", description="Column holding the dispreferred response: text, or a list of messages."
    )
    weight_field: str | None = Field(
        None, description="Optional column with a per-example loss weight (a finite number >= 0; rows with another "
        "value are dropped as malformed); 1.0 when unset."
    )


class HHRLHFSource(_Strict):
    """Anthropic HH-RLHF: each row holds two full dialogues that differ in the last assistant turn."""

    kind: Literal["hh_rlhf"] = "hh_rlhf"
    path: str = Field(
        "Anthropic/hh-rlhf",
        description="A local .jsonl or .jsonl.gz file; a folder laid out like the original repository "
        "(<subset>/<split>.jsonl.gz); or the hub id 'Anthropic/hh-rlhf' (needs network access).",
    )
    subsets: list[HHSubset] | None = Field(
        None,
        description="Which subsets to read (hub id or folder only); None reads every preference subset.",
    )
    split: Literal["train", "test"] = Field("train", description="Which split file to read.")
    single_turn: bool = Field(
        False, description="Keep only dialogues with a single Human turn (the prompt is one question)."
    )


class JsonlSource(_Columns):
    """A local JSON-lines file (.jsonl or .jsonl.gz), one preference pair a line."""

    kind: Literal["jsonl"] = "jsonl"
    path: str = Field(description="Path of the .jsonl or .jsonl.gz file.")


class HFDatasetSource(_Columns):
    """A dataset readable by the ``datasets`` library: a hub name, or a folder saved with save_to_disk."""

    kind: Literal["hf_dataset"] = "hf_dataset"
    name: str = Field(
        description="Hub dataset name, a local dataset script/folder for datasets.load_dataset, or a "
        "folder written by Dataset.save_to_disk / DatasetDict.save_to_disk."
    )
    config_name: str | None = Field(None, description="Dataset configuration (the 'name' argument).")
    data_dir: str | None = Field(None, description="Sub-folder of the dataset repository to read.")
    split: str = Field("train", description="Split to read, e.g. 'train' or 'test'.")


class SentimentSource(_Strict):
    """Pairs generated from a reward: the reference model samples completions of built-in neutral prompts,
    a sentiment reward scores them, best versus worst become chosen versus rejected
    (:mod:`alignkit.data.sentiment`). Needs the model, so it is built by the run, not by load_examples.
    """

    kind: Literal["sentiment"] = "sentiment"
    num_prompts: int | None = Field(None, ge=1, description="Training prompts to use; None = all of them.")
    num_eval_prompts: int | None = Field(
        None, ge=1, description="Held-out prompts for evaluation; None = all of the evaluation split."
    )
    completions_per_prompt: int = Field(4, ge=2, description="Completions sampled per prompt (K).")
    max_new_tokens: int = Field(32, ge=1, description="Tokens per sampled completion.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature (> 0, so samples differ).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, description="Completions generated at once.")
    reward: str = Field("vader_sentiment", description="Registered reward function that scores completions.")
    min_reward_gap: float = Field(
        0.0, ge=0.0, description="Keep a prompt only when its best - worst reward is above this."
    )
    use_cache: bool = Field(True, description="Reuse cached completions of the same model and settings.")
    generation_dtype: Literal["auto", "float32", "bfloat16"] | None = Field(
        None, description="Sample from a temporary copy of the model in this dtype. auto: bfloat16 where decoding "
        "in it measured faster than float32 on this machine (a small-batch matmul in each dtype, measured once and "
        "cached: bf16 halves the weight bytes per decoding step, but a CPU without AMX-BF16 or AVX512-BF16 "
        "emulates it far slower), else the model as loaded; None samples with the model as loaded."
    )


class KWayJsonlSource(_Strict):
    """A local .jsonl(.gz) file of K-way comparisons, for ``reward_kway``."""

    kind: Literal["kway_jsonl"] = "kway_jsonl"
    path: str = Field(description="Path of the .jsonl or .jsonl.gz file.")
    prompt_field: str = Field("prompt", description="Column with the prompt text.")
    responses_field: str = Field("responses", description="Column with the list of K response texts.")
    best_field: str = Field("best", description="Column with the index of the best response (or use scores_field).")
    scores_field: str = Field("scores", description="Column with K scores; the best is the arg-max. Used when "
                              "best_field is absent from a row.")


class _UnpairedColumns(_Strict):
    """Column names of unpaired feedback: one response per row, labelled desirable or not."""

    prompt_field: str = Field(
        "prompt", description="Column holding the prompt: text, or a list of {role, content} messages."
    )
    completion_field: str = Field(
        "completion", description="Column holding the response: text, or a list of assistant messages."
    )
    label_field: str = Field(
        "label", description="Column holding the feedback: true (desirable, thumbs up) or false (undesirable)."
    )
    messages_field: str = Field(
        "messages", description="Column holding a whole conversation, read when the row has no prompt column: "
        "its last assistant turn is the response and the messages before it the prompt.",
    )
    weight_field: str | None = Field(
        None, description="Optional column with a per-example loss weight (a finite number >= 0); 1.0 when unset."
    )


class UnpairedJsonlSource(_UnpairedColumns):
    """A local JSON-lines file (.jsonl or .jsonl.gz) of unpaired feedback, one labelled response a line."""

    kind: Literal["unpaired_jsonl"] = "unpaired_jsonl"
    path: str = Field(description="Path of the .jsonl or .jsonl.gz file.")


class UnpairedHFDatasetSource(_UnpairedColumns):
    """A ``datasets`` dataset of unpaired feedback: a hub name, or a folder saved with save_to_disk."""

    kind: Literal["unpaired_hf_dataset"] = "unpaired_hf_dataset"
    name: str = Field(description="Hub dataset name, a dataset script/folder, or a save_to_disk folder.")
    config_name: str | None = Field(None, description="Dataset configuration (the 'name' argument).")
    data_dir: str | None = Field(None, description="Sub-folder of the dataset repository to read.")
    split: str = Field("train", description="Split to read, e.g. 'train' or 'test'.")


SourceConfig = Annotated[
    HHRLHFSource | JsonlSource | HFDatasetSource | SentimentSource | KWayJsonlSource | UnpairedJsonlSource
    | UnpairedHFDatasetSource,
    Field(discriminator="kind"),
]
BUILTIN_SOURCES: tuple[type[StrictConfig], ...] = get_args(get_args(SourceConfig)[0])  # the union's members


# Every kind of data source, built-in or a plugin's: filled by the decorators of alignkit.data.sources (which
# holds what a kind is, SourceSpec); it lives here so that DataConfig can validate a plugin's kind by it.
SOURCES: Registry[Any] = Registry("data source")


class DataConfig(_Strict):
    """Where the preference pairs come from, how they are cut to length, and how they are split."""

    source: SourceConfig = Field(description="Where the pairs come from; chosen by its 'kind' (a built-in kind "
                                 "below, or one a plugin registered with its config class).")
    test_source: SourceConfig | None = Field(
        None,
        description="A separate source for held-out evaluation (e.g. HH's test split). When set, "
        "test_size is ignored and all of 'source' is used for training.",
    )
    max_length: int = Field(
        512, ge=2, description="Most tokens of prompt + response; longer responses are cut at the end."
    )
    max_prompt_length: int = Field(
        256, ge=1, description="Most prompt tokens once a prompt is cut (see prompt_truncation); a cut prompt keeps "
        "its end (the latest turns)."
    )
    prompt_truncation: PromptTruncation = Field(
        "always",
        description="When a prompt is cut to max_prompt_length. 'always': every longer prompt, even when prompt and "
        "response fit in max_length (the default: the token ids, and so published figures and caches, stay as "
        "before). 'when_needed': only when prompt + the longer response exceed max_length, the reference DPO "
        "implementation's rule; more prompts keep their whole context. Responses are then cut to fit max_length "
        "in both. report.json's 'truncation' counts what was cut.",
    )
    test_size: int | float = Field(
        0.1,
        description="Held-out share: a fraction in (0, 1) or a number of examples (0 = no held-out set).",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the train/test split and of the batch order.")
    max_examples: int | None = Field(
        None, ge=1, description="Use only the first N examples of the source (quick runs); None = all."
    )
    unpaired: bool | None = Field(
        None,
        description="Split each preference pair into a desirable (chosen) and an undesirable (rejected) "
        "example, for an unpaired loss (kto, bco). None: when the loss reads unpaired examples; true: "
        "always (the loss must read unpaired examples); false: never.",
    )
    chat_template: bool | None = Field(
        None,
        description="Render conversational rows with the tokenizer's chat template. None: when the "
        "tokenizer has one and the rows are conversational; False: render them as plain "
        "'Human:/Assistant:' text; True: require a template.",
    )

    @field_validator("source", "test_source", mode="wrap")
    @classmethod
    def _plugin_kinds(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return validate_plugin_kind(value, handler, lambda: SOURCES, BUILTIN_SOURCES)

    @field_serializer("source", "test_source", mode="wrap")
    def _dump_plugin_kinds(self, value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return dump_plugin_kind(value, handler, info, BUILTIN_SOURCES)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be smaller than data.max_length "
                f"({self.max_length}) to leave room for a response"
            )
        size = self.test_size
        if isinstance(size, bool) or (isinstance(size, float) and not 0.0 < size < 1.0) or (
            isinstance(size, int) and size < 0
        ):
            raise ValueError(
                f"data.test_size must be a fraction in (0, 1) or a count >= 0, got {size!r}"
            )
        return self
