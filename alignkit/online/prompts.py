"""The built-in prompt sources of online recipes (registered in :mod:`alignkit.data.prompt_sources`):
``sentiment`` and ``inline``, and prompts read from data, the kinds ``jsonl``, ``hh_rlhf`` and ``hf_dataset``.

Each kind reads prompts (no responses: the policy samples its own) from a file, HH-RLHF or a ``datasets``
dataset, turns them into the strings the sampler renders (:mod:`alignkit.data.prompts`: a chat template's
user turn, or plain text), drops what cannot be used (counted with why, never raised), removes identical
prompts, and splits train from held-out prompts: a seeded ``test_size`` share of one source, or a separate
held-out source (``eval_path``, ``eval_split``). Verifiable tasks (prompts with reference answers) are in
:mod:`alignkit.online.verifiable_prompts`.

Relative paths are relative to the current directory, as ``data.source.path`` of a preference recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from alignkit.config_base import SEED_MAX, StrictConfig
from alignkit.data.config import HHRLHFSource, HHSubset
from alignkit.data.prompt_sources import load_prompt_split, register_prompt_source
from alignkit.data.prompts import (
    Located,
    PromptSplit,
    dataset_prompts,
    finish_prompts,
    hh_prompts,
    jsonl_prompts,
    split_prompts,
)
from alignkit.data.sources import open_dataset
from alignkit.data.types import DataError, DropReport

__all__ = ["FilePromptsConfig", "PromptSourceFields", "split_located", "HFDatasetPrompts", "HHRLHFPrompts", "InlinePrompts", "JsonlPrompts",
           "SentimentPrompts", "load_file_prompts", "load_prompts"]


class SentimentPrompts(StrictConfig):
    """The project's neutral prompts of the controlled-sentiment task (train and held-out splits)."""

    kind: Literal["sentiment"] = Field(description="Built-in sentiment prompts (alignkit.data.sentiment).")
    num_prompts: int | None = Field(None, ge=1, description="Training prompts; null: the whole train split.")
    num_eval_prompts: int = Field(64, ge=1, description="Held-out prompts for the final evaluation and the front.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Which prompts are drawn (the order of training is the run's seed).")


class InlinePrompts(StrictConfig):
    """Prompts written in the recipe."""

    kind: Literal["inline"] = Field(description="Prompts listed in the recipe.")
    train: list[str] = Field(min_length=1, description="Training prompts.")
    eval: list[str] = Field(min_length=1, description="Held-out prompts for evaluation.")


@register_prompt_source("sentiment")
def _sentiment(cfg: SentimentPrompts, tokenizer: Any) -> PromptSplit:
    from alignkit.data.sentiment import sentiment_prompts  # its module imports the reward and model layers

    return PromptSplit(sentiment_prompts(cfg.num_prompts, seed=cfg.seed, split="train"),
                       sentiment_prompts(cfg.num_eval_prompts, seed=cfg.seed, split="eval"))


@register_prompt_source("inline")
def _inline(cfg: InlinePrompts, tokenizer: Any) -> PromptSplit:
    return PromptSplit(list(cfg.train), list(cfg.eval))


class PromptSourceFields(StrictConfig):
    """What every prompt kind read from data shares: caps, the held-out split, de-duplication."""

    num_prompts: int | None = Field(None, ge=1, description="Training prompts: the first N of the training part "
                                    "(source order); null: all of them.")
    num_eval_prompts: int = Field(64, ge=1, description="Most held-out prompts (for the final evaluation and the "
                                  "WARP front): the first N of a separate held-out source, or the most that "
                                  "test_size holds out of one source (the rest train).")
    test_size: float | int = Field(0.1, description="Held out of the one source when there is no separate held-out "
                                   "source: a fraction in (0, 1) or a count >= 1 (capped by num_eval_prompts).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Which prompts are held out (the order of training is the "
                      "run's seed).")
    dedupe: bool = Field(True, description="Keep only the first of identical prompts (and, with a separate "
                         "held-out source, leave its prompts out of training).")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Drop prompts longer than this many tokens as the "
                                          "sampler formats them (chat template included); null keeps every one.")

    @model_validator(mode="after")
    def _test_size(self) -> PromptSourceFields:
        size = self.test_size
        if isinstance(size, bool) or (isinstance(size, float) and not 0.0 < size < 1.0) or (
                isinstance(size, int) and size < 1):
            raise ValueError(f"prompts.test_size must be a fraction in (0, 1) or a count >= 1, got {size!r}")
        return self


class _PromptFields(StrictConfig):
    """The columns a row's prompt is read from."""

    prompt_field: str = Field("prompt", description="Field holding the prompt: text, or a list of {role, content} "
                              "messages.")
    messages_field: str = Field("messages", description="Field read when prompt_field is absent: a conversation "
                                "whose final user message is answered (trailing assistant messages, such as a "
                                "reference answer, are not part of the prompt).")


class JsonlPrompts(PromptSourceFields, _PromptFields):
    """Prompts from a JSON-lines file: ``{"prompt": "..."}`` or ``{"messages": [{"role": "user", ...}, ...]}``.

    With a chat template, a prompt is rendered as one user turn (a conversation of one user message); a
    conversation of several messages needs a tokenizer without a template (it is then rendered as
    ``Human:/Assistant:`` text) and is otherwise dropped and counted.
    """

    kind: Literal["jsonl"] = Field(description="Prompts from a .jsonl or .jsonl.gz file.")
    path: str = Field(description="The .jsonl or .jsonl.gz file, one prompt per line.")
    eval_path: str | None = Field(None, description="A separate file of held-out prompts (same fields); "
                                  "test_size is then ignored.")

    def has_eval_source(self) -> bool:
        """Whether held-out prompts come from a file of their own."""
        return self.eval_path is not None

    def read(self, held_out: bool) -> tuple[list[Located], DropReport]:
        """The located prompts of the training file, or of the held-out file."""
        path = self.eval_path if held_out else self.path
        assert path is not None
        return jsonl_prompts(path, self.prompt_field, self.messages_field,
                             field="prompts.eval_path" if held_out else "prompts.path")


class HHRLHFPrompts(PromptSourceFields):
    """The prompts of Anthropic HH-RLHF: each dialogue up to its last ``Assistant:`` cue (the HH loader's prompt).

    Rows the loader drops (empty or identical responses, dialogues that disagree) are counted, as in
    ``data.source``. With a chat template, multi-turn prompts are dropped (see ``jsonl``): set ``single_turn``.
    """

    kind: Literal["hh_rlhf"] = Field(description="Prompts of Anthropic HH-RLHF dialogues.")
    path: str = Field("Anthropic/hh-rlhf", description="A local .jsonl(.gz) file; a folder laid out like the "
                      "original repository (<subset>/<split>.jsonl.gz); or the hub id 'Anthropic/hh-rlhf' "
                      "(needs network access).")
    subsets: list[HHSubset] | None = Field(None, description="Which subsets to read (hub id or folder only); null "
                                           "reads every preference subset.")
    split: Literal["train", "test"] = Field("train", description="Which split the training prompts come from.")
    eval_split: Literal["train", "test"] | None = Field(None, description="Read the held-out prompts from this split "
                                                        "(folder or hub id only); null: hold out test_size of "
                                                        "`split`.")
    single_turn: bool = Field(False, description="Keep only dialogues with a single Human turn.")

    @model_validator(mode="after")
    def _two_splits(self) -> HHRLHFPrompts:
        if self.eval_split is not None and self.eval_split == self.split:
            raise ValueError(f"prompts.eval_split must differ from prompts.split ({self.split!r})")
        return self

    def source(self, split: Literal["train", "test"]) -> HHRLHFSource:
        """The HH loader's config for one split."""
        return HHRLHFSource(path=self.path, subsets=self.subsets, split=split, single_turn=self.single_turn)

    def has_eval_source(self) -> bool:
        """Whether held-out prompts come from a split of their own."""
        return self.eval_split is not None

    def read(self, held_out: bool) -> tuple[list[Located], DropReport]:
        """The located prompts of the training split, or of the held-out split."""
        hh_split = self.eval_split if held_out else self.split
        assert hh_split is not None
        if held_out and Path(self.path).expanduser().is_file():
            raise DataError(f"prompts.eval_split: {self.path!r} is one file (one split); use a folder of "
                            "<subset>/<split>.jsonl.gz or drop eval_split to hold out test_size")
        return hh_prompts(self.source(hh_split), "prompts")


class HFDatasetPrompts(PromptSourceFields, _PromptFields):
    """Prompts from a column of a Hugging Face ``datasets`` dataset: a folder saved with ``save_to_disk``, a
    builder with local files (``name: json``, ``data_files: prompts.jsonl``), a dataset folder or a hub name."""

    kind: Literal["hf_dataset"] = Field(description="Prompts from a datasets dataset.")
    name: str = Field(description="A folder written by Dataset(Dict).save_to_disk, a builder such as json, csv or "
                      "parquet (with data_files), a local dataset folder or script, or a hub name (needs network).")
    config_name: str | None = Field(None, description="Dataset configuration (the 'name' argument of load_dataset).")
    data_dir: str | None = Field(None, description="Sub-folder of the dataset repository to read.")
    data_files: str | list[str] | None = Field(None, description="Local data files for a builder such as json or "
                                               "parquet (load_dataset's data_files).")
    split: str = Field("train", description="Split the training prompts come from.")
    eval_split: str | None = Field(None, description="Split of the held-out prompts; null: hold out test_size of "
                                   "`split`.")

    @model_validator(mode="after")
    def _two_splits(self) -> HFDatasetPrompts:
        if self.eval_split is not None and self.eval_split == self.split:
            raise ValueError(f"prompts.eval_split must differ from prompts.split ({self.split!r})")
        return self

    def has_eval_source(self) -> bool:
        """Whether held-out prompts come from a split of their own."""
        return self.eval_split is not None

    def read(self, held_out: bool) -> tuple[list[Located], DropReport]:
        """The located prompts of the training split, or of the held-out split."""
        split = self.eval_split if held_out else self.split
        assert split is not None
        ds = open_dataset(self.name, split, config_name=self.config_name, data_dir=self.data_dir,
                          data_files=self.data_files, field="prompts", split_key="eval_split" if held_out else "split")
        return dataset_prompts(ds, self.prompt_field, self.messages_field, field="prompts")


FilePromptsConfig = JsonlPrompts | HHRLHFPrompts | HFDatasetPrompts


def _no_prompts(cfg: FilePromptsConfig, report: DropReport, which: str) -> DataError:
    where = getattr(cfg, "path", None) or getattr(cfg, "name", None)
    return DataError(f"prompts ({cfg.kind}): no usable {which} prompts in {where}\n{report.summary()}")


def load_prompts(cfg: Any, tokenizer: Any) -> PromptSplit:
    """Training and held-out prompts of any registered ``prompts:`` section (the registry's loader of its kind)."""
    return load_prompt_split(cfg, tokenizer)


@register_prompt_source("jsonl")
@register_prompt_source("hh_rlhf")
@register_prompt_source("hf_dataset")
def load_file_prompts(cfg: FilePromptsConfig, tokenizer: Any) -> PromptSplit:
    """Training and held-out prompt strings of a ``prompts:`` section read from data, with what was dropped.

    Args:
        cfg: the section.
        tokenizer: the policy's tokenizer (its chat template decides how conversations reach the sampler;
            it counts tokens for ``max_prompt_tokens``); None renders as plain text.

    Raises:
        DataError: naming the field, for a missing file, dataset, split or prompt field, or when no usable
            training or held-out prompt is left.
    """
    located, report = cfg.read(held_out=False)
    held = cfg.read(held_out=True) if cfg.has_eval_source() else None
    return split_located(cfg, tokenizer, located, report, held)


def split_located(cfg: Any, tokenizer: Any, located: list[Located], report: DropReport,
                  held: tuple[list[Located], DropReport] | None) -> PromptSplit:
    """Rendered, filtered and de-duplicated training and held-out prompts of located rows.

    Args:
        cfg: a section with :class:`PromptSourceFields` (caps, test_size, seed, dedupe) and a ``kind``.
        tokenizer: renders and counts tokens (None: plain text).
        located, report: the training rows and their account.
        held: the rows of a separate held-out source and their account; None holds ``test_size`` out of
            ``located``.

    Raises:
        DataError: no usable training or held-out prompt is left.
    """
    options: dict[str, Any] = {"max_prompt_tokens": cfg.max_prompt_tokens, "dedupe": cfg.dedupe}
    if held is None:
        prompts = finish_prompts(located, tokenizer, report, **options)
        if not prompts:
            raise _no_prompts(cfg, report, "training")
        return split_prompts(prompts, report, test_size=cfg.test_size, seed=cfg.seed, num_prompts=cfg.num_prompts,
                             num_eval_prompts=cfg.num_eval_prompts)
    eval_located, eval_report = held
    held_out = finish_prompts(eval_located, tokenizer, eval_report, **options)
    if len(held_out) > cfg.num_eval_prompts:
        eval_report.drop(f"beyond prompts.num_eval_prompts ({cfg.num_eval_prompts})",
                         count=len(held_out) - cfg.num_eval_prompts)
        held_out = held_out[:cfg.num_eval_prompts]
    if not held_out:
        raise _no_prompts(cfg, eval_report, "held-out")
    # A prompt in both sources is held out only, so evaluation never scores a prompt the policy trained on.
    train = finish_prompts(located, tokenizer, report, exclude=held_out if cfg.dedupe else (), **options)
    if cfg.num_prompts is not None and len(train) > cfg.num_prompts:
        report.drop(f"beyond prompts.num_prompts ({cfg.num_prompts})", count=len(train) - cfg.num_prompts)
        train = train[:cfg.num_prompts]
    if not train:
        raise _no_prompts(cfg, report, "training")
    return PromptSplit(train, held_out, report, eval_report)
