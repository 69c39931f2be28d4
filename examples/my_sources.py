"""A data source and a prompt source of your own, named by a recipe without changing alignkit.

Each registers with its config class, so a recipe that lists this file in ``plugins:`` (or gets it from
``--plugin``) names the kind like a built-in one, and a misspelt setting is an error at that line::

    plugins: [my_sources.py]
    data:
      source: {kind: arithmetic_pairs, count: 200}     # preference pairs: the right sum is chosen
    ...
    prompts: {kind: arithmetic_prompts, count: 300, num_eval_prompts: 50}   # online: problems with answers
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit import (
    DropReport,
    PreferenceExample,
    PromptSplit,
    StrictConfig,
    register_prompt_source,
    register_source,
)


class ArithmeticPairs(StrictConfig):
    """``count`` pairs "What is a + b?": the right sum chosen, a sum off by one rejected."""

    kind: Literal["arithmetic_pairs"] = "arithmetic_pairs"
    count: int = Field(100, ge=1, le=10_000)


@register_source("arithmetic_pairs", config=ArithmeticPairs)
def load_arithmetic_pairs(cfg: ArithmeticPairs, **_) -> tuple[list[PreferenceExample], DropReport]:
    report = DropReport()
    examples = []
    for i in range(cfg.count):
        a, b = i % 17, (7 * i) % 13
        report.seen += 1
        examples.append(PreferenceExample(prompt=f"What is {a} + {b}?", chosen=f" {a + b}.",
                                          rejected=f" {a + b + 1}."))
    return examples, report


class ArithmeticPrompts(StrictConfig):
    """``count`` training problems and ``num_eval_prompts`` held-out ones, each carrying its answer."""

    kind: Literal["arithmetic_prompts"] = "arithmetic_prompts"
    count: int = Field(100, ge=1, le=10_000)
    num_eval_prompts: int = Field(20, ge=1, le=10_000)


@register_prompt_source("arithmetic_prompts", config=ArithmeticPrompts)
def load_arithmetic_prompts(cfg: ArithmeticPrompts, tokenizer) -> PromptSplit:
    problems = {f"What is {i} + {i % 9}? Answer with a number.": {"answer": str(i + i % 9)}
                for i in range(cfg.count + cfg.num_eval_prompts)}  # distinct prompts: i differs
    prompts = list(problems)
    held_out = prompts[:cfg.num_eval_prompts]  # never trained on
    return PromptSplit(train=prompts[cfg.num_eval_prompts:], eval=held_out, metadata=problems)
