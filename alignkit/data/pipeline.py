"""One call from a recipe's ``data:`` section to train and test items, whatever the source's kind.

:func:`prepare_data` asks the source registry (:mod:`alignkit.data.sources`) how the kind is prepared;
kinds with an example loader share :func:`prepare_pairs` (load, cap, split, tokenize).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignkit.data.config import DataConfig
from alignkit.data.sources import SOURCES, PrepareContext, load_examples
from alignkit.data.split import split_train_test
from alignkit.data.tokenize import tokenize_pairs, tokenize_sft
from alignkit.data.types import DataError, DropReport, PreferenceExample, PreparedData
from alignkit.data.unpaired_sources import split_pairs
from alignkit.losses.batch_kinds import UNPAIRED

__all__ = ["PreparedData", "heldout_prompts", "prepare_data", "prepare_pairs"]


def _capped(
    cfg: DataConfig, examples: list[PreferenceExample], report: DropReport
) -> tuple[list[PreferenceExample], DropReport]:
    """The first ``cfg.max_examples`` examples; the rest are counted as dropped by the cap."""
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        report.drop(f"beyond data.max_examples ({cfg.max_examples})", count=len(examples) - cfg.max_examples)
        examples = examples[: cfg.max_examples]
    return examples, report


def prepare_data(cfg: DataConfig, tokenizer: Any, context: PrepareContext | None = None, *, sft: bool = False,
                 **extra: Any) -> PreparedData:
    """Train and test items of a recipe's ``data:`` section, prepared as its source's kind says.

    Args:
        cfg: the recipe's data section.
        tokenizer: a Hugging Face tokenizer.
        context: the model (for a source that generates pairs), seed and console; with ``unpaired`` the
            pairs of a paired source become unpaired items (:func:`~alignkit.data.unpaired_sources.split_pairs`).
        sft: tokenize prompt + chosen only (``rejected_ids`` empty).
        **extra: passed to example loaders (the tokenizer is always passed as ``tokenizer=``).

    Raises:
        DataError: when nothing usable is left for training, or the source needs a model and none is given.
    """
    context = context or PrepareContext()
    context = PrepareContext(model=context.model, seed=context.seed, console=context.console,
                             sft=sft or context.sft, unpaired=context.unpaired, extra={**context.extra, **extra})
    spec = SOURCES.get(cfg.source.kind)
    if spec.needs_model and context.model is None:
        raise DataError(f"data.source.kind {cfg.source.kind!r} is generated from the model, not loaded: "
                        "prepare it with the model (PrepareContext(model=...))")
    data = (spec.prepare or prepare_pairs)(cfg, tokenizer, context)
    if context.unpaired and UNPAIRED.split_from in spec.feeds:  # pairs split; unpaired items stay
        data = split_pairs(data, cfg)
    return data


def prepare_pairs(cfg: DataConfig, tokenizer: Any, context: PrepareContext) -> PreparedData:
    """Load ``cfg.source``, keep the first ``max_examples``, split (or load ``test_source``), tokenize."""
    loader_context = {"tokenizer": tokenizer, **context.extra}
    examples, load_report = _capped(cfg, *load_examples(cfg.source, **loader_context))
    if not examples:
        where = getattr(cfg.source, "path", None) or getattr(cfg.source, "name", None) or cfg.source.kind
        raise DataError(f"no usable training pairs from data.source ({cfg.source.kind}): {where} has no usable "
                        f"rows\nloading: {load_report.summary()}")
    if cfg.test_source is not None:
        train_ex = examples
        test_ex, test_load = _capped(cfg, *load_examples(cfg.test_source, **loader_context))
        load_report.merge(test_load)
    else:
        try:
            train_ex, test_ex = split_train_test(examples, cfg.test_size, cfg.seed)
        except ValueError as err:  # more held out than there are examples
            raise DataError(f"data.test_size: {err}") from None
    tok = tokenize_sft if context.sft else tokenize_pairs
    train, train_report = tok(train_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template,
                              prompt_truncation=cfg.prompt_truncation)
    test, test_report = tok(test_ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.chat_template,
                            start_index=len(train_ex), prompt_truncation=cfg.prompt_truncation)
    if not train:
        raise DataError(
            f"no usable training pairs from data.source ({cfg.source.kind}):\n"
            f"loading: {load_report.summary()}\ntokenization: {train_report.summary()}"
        )
    return PreparedData(train, test, train_ex, test_ex, load_report, train_report, test_report)


def heldout_prompts(examples: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """Distinct prompts of held-out examples, in order, and each one's chosen response where it has one.

    A conversation contributes its single user turn (multi-turn conversations are not sampled from); an
    example without a chosen response (K-way candidates) contributes its prompt only.
    """
    prompts: dict[str, None] = {}
    chosen: dict[str, str] = {}
    for ex in examples:
        prompt = ex.prompt
        if not isinstance(prompt, str):
            users = [m["content"] for m in prompt if m.get("role") == "user"]
            if len(prompt) != 1 or not users:
                continue
            prompt = users[0]
        prompts.setdefault(prompt, None)
        response = getattr(ex, "chosen", None)
        if response is None:
            continue
        if not isinstance(response, str):
            response = "".join(m["content"] for m in response if m.get("role") == "assistant")
        chosen.setdefault(prompt, response.strip())
    return list(prompts), chosen
