"""Tokenize preference examples into prompt and response ids, cut to length.

Rules, in order:

1. The prompt and each response are tokenized *separately* and their ids concatenated, so the boundary
   between prompt and response is exact: a joint tokenization may merge the prompt's last characters
   with the response's first into one token, and then no token would belong wholly to the response.
   (With the space-before-response convention of :mod:`alignkit.data.hh_rlhf` the two agree anyway.)
2. Plain-text prompts get the tokenizer's BOS token in front when the tokenizer adds one by default
   (Llama does, GPT-2 does not); chat-template text already carries whatever the template adds.
3. Each response gets EOS appended (unless it already ends with it, as chat turns often do), so the
   model learns to stop and the stop token's log-prob counts in the response's score.
4. A prompt longer than ``max_prompt_length`` keeps its *end* (the latest turns, which the response
   answers); BOS, when present, stays at the front. With ``prompt_truncation="always"`` (the default)
   every such prompt is cut; with ``"when_needed"`` only when prompt + the longer response exceed
   ``max_length`` (:mod:`alignkit.data.truncation`).
5. Responses then keep their *start*, so that prompt + response <= ``max_length``. A response cut this
   way loses its EOS: it did not finish.

What the limits cut of the pairs kept is counted in the report's ``truncated`` ("prompt cut", "response cut").

Rows that cannot be used are dropped and counted, never raised on: empty response, prompt too long to
leave room for any response token (only when ``max_prompt_length >= max_length``), chosen and rejected
identical once cut, chat template that does not reproduce the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.data.render import render_example, resolve_chat_template
from alignkit.data.truncation import IDENTICAL_AFTER_TRUNCATION, PromptTruncation, count_cuts, truncate_pair
from alignkit.data.types import (
    CHAT_TEMPLATE_PREFIX,
    EMPTY_RESPONSE,
    PROMPT_TOO_LONG,
    DropReport,
    PreferenceExample,
    TokenizedPair,
)

__all__ = ["IDENTICAL_AFTER_TRUNCATION", "tokenize_pairs", "tokenize_sft", "truncate_pair"]


def _adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts BOS in front by default (we tokenize without special tokens)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


def _batch_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts in one call (fast tokenizers parallelize and amortize overhead)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _tokenize(
    examples: Sequence[PreferenceExample],
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    chat_template: bool | None,
    with_rejected: bool,
    start_index: int,
    prompt_truncation: PromptTruncation,
) -> tuple[list[TokenizedPair], DropReport]:
    report = DropReport(seen=len(examples))
    use_template = resolve_chat_template(tokenizer, chat_template, any(e.conversational for e in examples))
    bos = tokenizer.bos_token_id if not use_template and _adds_bos(tokenizer) else None

    # Render everything first, then tokenize in a few batched calls; identical prompts once.
    rendered: list[tuple[int, str, list[str]]] = []
    for i, ex in enumerate(examples):
        out = render_example(ex, tokenizer, use_template, with_rejected)
        if out is None:
            report.drop(CHAT_TEMPLATE_PREFIX, f"example {i}")
            continue
        prompt, responses = out
        if any(not r.strip() for r in responses):
            report.drop(EMPTY_RESPONSE, f"example {i}")
            continue
        rendered.append((i, prompt, responses))

    unique_prompts = list(dict.fromkeys(p for _, p, _ in rendered))
    prompt_ids = dict(zip(unique_prompts, _batch_ids(tokenizer, unique_prompts), strict=True))
    n_resp = 2 if with_rejected else 1
    response_ids = _batch_ids(tokenizer, [r for _, _, rs in rendered for r in rs])

    pairs: list[TokenizedPair] = []
    for k, (i, prompt, _) in enumerate(rendered):
        pair_response_ids = response_ids[k * n_resp:(k + 1) * n_resp]
        cut = truncate_pair(prompt_ids[prompt], pair_response_ids, max_length, max_prompt_length,
                            tokenizer.eos_token_id, bos, prompt_truncation)
        if cut is None:
            report.drop(PROMPT_TOO_LONG, f"example {i}")
            continue
        p_ids, r_ids = cut.prompt_ids, cut.responses
        if with_rejected and r_ids[0] == r_ids[1]:
            report.drop(IDENTICAL_AFTER_TRUNCATION, f"example {i}")
            continue
        count_cuts(report, cut)
        pairs.append(TokenizedPair(
            prompt_ids=p_ids, chosen_ids=r_ids[0], rejected_ids=r_ids[1] if with_rejected else [],
            weight=examples[i].weight, index=start_index + i,
        ))
    return pairs, report


def tokenize_pairs(
    examples: Sequence[PreferenceExample],
    tokenizer,
    max_length: int = 512,
    max_prompt_length: int = 256,
    chat_template: bool | None = None,
    start_index: int = 0,
    prompt_truncation: PromptTruncation = "always",
) -> tuple[list[TokenizedPair], DropReport]:
    """Tokenize preference pairs (see the module docstring for the rules).

    Args:
        examples: pairs from :func:`alignkit.data.load_examples` (text or conversations).
        tokenizer: a Hugging Face tokenizer.
        max_length: most tokens of prompt + one response.
        max_prompt_length: most prompt tokens; longer prompts keep their end.
        chat_template: render conversations with the tokenizer's chat template (None: when it has one
            and some example is conversational).
        start_index: added to every ``index``; tokenizing the test split with
            ``start_index=len(train_examples)`` makes indices unique across both splits.
        prompt_truncation: when a prompt is cut to ``max_prompt_length``: "always" or "when_needed"
            (only when prompt + the longer response exceed ``max_length``).

    Returns:
        The usable pairs, each with ``index = start_index + position in examples``, and a report of
        the rest (``seen = len(examples)``) with what was cut of the pairs kept (``truncated``).
    """
    return _tokenize(examples, tokenizer, max_length, max_prompt_length, chat_template, True, start_index,
                     prompt_truncation)


def tokenize_sft(
    examples: Sequence[PreferenceExample],
    tokenizer,
    max_length: int = 512,
    max_prompt_length: int = 256,
    chat_template: bool | None = None,
    start_index: int = 0,
    prompt_truncation: PromptTruncation = "always",
) -> tuple[list[TokenizedPair], DropReport]:
    """Tokenize prompt + chosen response for supervised fine-tuning; ``rejected_ids`` is empty.

    Same rules and arguments as :func:`tokenize_pairs`; the rejected response is never read.
    """
    return _tokenize(examples, tokenizer, max_length, max_prompt_length, chat_template, False, start_index,
                     prompt_truncation)
