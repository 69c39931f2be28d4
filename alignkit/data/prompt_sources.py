"""Prompt sources: a registry from ``prompts.kind`` (online recipes) to how that kind's prompts are loaded.

A prompt source gives the prompts online training samples from and the held-out prompts it is evaluated on,
with the metadata each prompt carries to the reward (a reference answer, the task that generated it)::

    @register_prompt_source("my_prompts")
    def load_my_prompts(cfg, tokenizer) -> PromptSplit:
        return PromptSplit(train=[...], eval=[...], metadata={"What is 2+2?": {"answer": "4"}})

Built-ins: ``sentiment`` and ``inline`` (alignkit.online.prompts), ``jsonl``, ``hh_rlhf`` and ``hf_dataset`` (rows
of data), ``gsm8k_jsonl`` and ``reasoning_gym`` (verifiable tasks, alignkit.online.verifiable_prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignkit.data.prompts import PromptSplit
from alignkit.registry import Registry

__all__ = ["PROMPT_SOURCES", "PromptLoader", "list_prompt_sources", "load_prompt_split", "register_prompt_source"]

# loader(prompts_section, tokenizer) -> training and held-out prompts; the tokenizer may be None (plain text).
PromptLoader = Callable[[Any, Any], PromptSplit]

PROMPT_SOURCES: Registry[PromptLoader] = Registry("prompt source")


def register_prompt_source(kind: str, *, config: type | None = None) -> Callable[[PromptLoader], PromptLoader]:
    """Decorator: register ``fn(cfg, tokenizer) -> PromptSplit`` as the loader of ``prompts.kind == kind``.

    ``config``: a plugin's config class (a pydantic model with ``kind: Literal["<kind>"]``), which a recipe's
    ``prompts:`` section of this kind validates against; the built-in kinds have theirs in ``PromptsConfig``.
    """

    def wrap(fn: PromptLoader) -> PromptLoader:
        PROMPT_SOURCES.add(kind, fn, config=config)
        return fn

    return wrap


def list_prompt_sources() -> list[str]:
    """Names of every registered prompt source, sorted."""
    return PROMPT_SOURCES.names()


def load_prompt_split(cfg: Any, tokenizer: Any) -> PromptSplit:
    """The training and held-out prompts of a ``prompts:`` section (anything with a registered ``kind``).

    Args:
        cfg: the section.
        tokenizer: the policy's tokenizer (its chat template decides how prompts reach the sampler); None
            renders as plain text.
    """
    return PROMPT_SOURCES.get(cfg.kind)(cfg, tokenizer)
