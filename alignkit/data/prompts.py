"""Prompts (no responses) from data: rows of jsonl files or datasets, HH-RLHF dialogues; as the sampler reads them.

Online training samples its own responses, so it needs prompts only. A row holds a prompt as text
(``{"prompt": "..."}``) or as a conversation (``{"messages": [{"role": "user", "content": ...}, ...]}``,
trailing assistant messages, e.g. a reference answer, are not part of the prompt). Rows that give no usable
prompt are counted in a :class:`~alignkit.data.types.DropReport` with their ``file:line`` or ``row N``, never
raised.

How a prompt reaches the model: the sampler (:func:`alignkit.models.generate.format_prompt`) takes a prompt
string and, when the tokenizer has a chat template, renders it as one user turn with the generation cue
(without one, it tokenizes the text as it is). :func:`sampler_prompt` turns a prompt into that string so that
the model sees what :func:`alignkit.data.render.render_prompt` renders for offline data:

- with a chat template: a conversation of one user message becomes that message's text (the sampler then
  renders exactly ``apply_chat_template([user], add_generation_prompt=True)``); HH-style text
  (``"\\n\\nHuman: ..."``) is split into turns first, as offline. A conversation of several messages (a system
  message, earlier turns) cannot be handed to the sampler as one user turn and is dropped and counted;
- without one: text passes through unchanged and a conversation becomes HH-style text ending with
  ``"\\n\\nAssistant:"`` (the offline plain rendering).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.config import HHRLHFSource
from alignkit.data.hh_rlhf import load_hh_rlhf
from alignkit.data.jsonl import read_jsonl, require_file
from alignkit.data.render import hh_text_to_messages, render_prompt
from alignkit.data.split import held_out_count
from alignkit.data.types import MALFORMED, DataError, DropReport, Message, TextOrMessages, is_conversation

__all__ = [
    "DUPLICATE",
    "EMPTY_PROMPT",
    "IN_HELDOUT",
    "MULTI_MESSAGE",
    "NO_USER_TURN",
    "Located",
    "PromptSplit",
    "dataset_prompts",
    "finish_prompts",
    "hh_prompts",
    "jsonl_prompts",
    "row_prompt",
    "sampler_prompt",
    "split_prompts",
]

EMPTY_PROMPT = "empty prompt"
NO_USER_TURN = "conversation does not end with a user message"
MULTI_MESSAGE = "several messages (with a chat template, the sampler takes a prompt as one user turn)"
DUPLICATE = "duplicate prompt"
IN_HELDOUT = "also a held-out prompt"

# A prompt and where it was read (``file:line``, ``row N``; None when the loader does not say).
Located = tuple[str | None, TextOrMessages]


def row_prompt(row: dict[str, Any], prompt_field: str, messages_field: str, where: str,
               report: DropReport) -> TextOrMessages | None:
    """The prompt of one row: ``row[prompt_field]`` (text or messages), else ``row[messages_field]`` (messages).

    Returns None after counting in ``report`` why the row gives no prompt.
    """
    if row.get(prompt_field) is not None:
        name, value = prompt_field, row[prompt_field]
    elif row.get(messages_field) is not None:
        name, value = messages_field, row[messages_field]
    else:
        report.drop(MALFORMED, f"{where}: missing field {prompt_field!r} (or {messages_field!r})")
        return None
    if isinstance(value, str):
        if not value.strip():
            report.drop(EMPTY_PROMPT, where)
            return None
        return value
    if not is_conversation(value) or not value:
        report.drop(MALFORMED, f"{where}: field {name!r} must be text or a list of {{role, content}} messages")
        return None
    messages: list[Message] = list(value)
    while messages and messages[-1]["role"] == "assistant":  # a reference answer is not part of the prompt
        messages.pop()
    if not messages or messages[-1]["role"] != "user":
        report.drop(NO_USER_TURN, where)
        return None
    if not messages[-1]["content"].strip():
        report.drop(EMPTY_PROMPT, where)
        return None
    return messages


def _rows_prompts(rows: Iterable[tuple[str, dict[str, Any]]], prompt_field: str, messages_field: str,
                  report: DropReport) -> tuple[list[Located], int, int]:
    """The prompts of ``(where, row)`` pairs (rows already counted as seen), how many rows there were and how many
    had either field."""
    prompts: list[Located] = []
    n_rows = with_field = 0
    for where, row in rows:
        n_rows += 1
        with_field += row.get(prompt_field) is not None or row.get(messages_field) is not None
        prompt = row_prompt(row, prompt_field, messages_field, where, report)
        if prompt is not None:
            prompts.append((where, prompt))
    return prompts, n_rows, with_field


def jsonl_prompts(path: str, prompt_field: str, messages_field: str, *,
                  field: str = "prompts.path") -> tuple[list[Located], DropReport]:
    """The prompts of a .jsonl/.jsonl.gz file; bad lines counted with their ``file:line``.

    Raises:
        DataError: naming ``field`` when the file is missing or a folder, and naming the prompt field when no
            line has ``prompt_field`` or ``messages_field``.
    """
    file = require_file(path, field)
    if file.is_dir():
        raise DataError(f"{field}: {str(file)!r} is a folder; a jsonl prompt file is one file")
    report = DropReport()
    prompts, n_rows, with_field = _rows_prompts(read_jsonl(file, report), prompt_field, messages_field, report)
    if n_rows and not with_field:
        section = field.rsplit(".", 1)[0]
        raise DataError(f"{section}.prompt_field: no line of {str(file)!r} has a field {prompt_field!r} or "
                        f"{messages_field!r} (set {section}.prompt_field / {section}.messages_field)")
    return prompts, report


def dataset_prompts(ds: Any, prompt_field: str, messages_field: str, *,
                    field: str = "prompts") -> tuple[list[Located], DropReport]:
    """The prompts of a ``datasets`` dataset (column ``prompt_field``, else ``messages_field``); bad rows as ``row N``.

    Raises:
        DataError: naming ``{field}.prompt_field`` when the dataset has neither column.
    """
    columns = list(ds.column_names)
    if prompt_field not in columns and messages_field not in columns:
        raise DataError(f"{field}.prompt_field: the dataset has no column {prompt_field!r} or {messages_field!r}; "
                        f"columns: {', '.join(columns)}")
    report = DropReport()
    prompts, _, _ = _rows_prompts(_iter_dataset(ds, report), prompt_field, messages_field, report)
    return prompts, report


def hh_prompts(cfg: HHRLHFSource, field: str = "prompts") -> tuple[list[Located], DropReport]:
    """The prompt of every HH-RLHF row the loader keeps (``"\\n\\nHuman: ...\\n\\nAssistant:"``), in order."""
    examples, report = load_hh_rlhf(cfg, field)
    return [(None, ex.prompt) for ex in examples], report


def sampler_prompt(prompt: TextOrMessages, chat: bool) -> str | None:
    """The prompt string the sampler renders as the offline data would be (see the module docstring).

    Returns None for a conversation of several messages when ``chat`` (one user turn is all the sampler takes).
    """
    if not chat:
        return render_prompt(prompt, None, use_template=False)
    messages = hh_text_to_messages(prompt) if isinstance(prompt, str) else prompt
    if len(messages) != 1 or messages[0]["role"] != "user":
        return None
    return messages[0]["content"]


def finish_prompts(prompts: Iterable[Located], tokenizer: Any, report: DropReport, *,
                   max_prompt_tokens: int | None = None, dedupe: bool = True,
                   exclude: Iterable[str] = ()) -> list[str]:
    """Prompt strings for the sampler, in order; the prompts left out are counted in ``report``.

    Args:
        prompts: ``(where, prompt)``, prompts as text or conversations (:func:`jsonl_prompts`, ...).
        tokenizer: decides the rendering (chat template or not) and counts tokens; None renders as plain text.
        max_prompt_tokens: drop prompts longer than this many tokens as the sampler formats them.
        dedupe: keep the first of identical prompt strings.
        exclude: prompt strings to leave out (the held-out prompts, when training prompts come from another file).
    """
    from alignkit.models.generate import format_prompt, uses_chat_template  # the sampler's module: torch

    chat = tokenizer is not None and uses_chat_template(tokenizer)
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs the tokenizer")
    excluded = set(exclude)
    seen: set[str] = set()
    out: list[str] = []
    for where, prompt in prompts:
        text = sampler_prompt(prompt, chat)
        if text is None:
            report.drop(MULTI_MESSAGE, where)
            continue
        if not text.strip():
            report.drop(EMPTY_PROMPT, where)
            continue
        if text in excluded:
            report.drop(IN_HELDOUT, where)
            continue
        if dedupe and text in seen:
            report.drop(DUPLICATE, where)
            continue
        if max_prompt_tokens is not None and len(format_prompt(tokenizer, text, chat)) > max_prompt_tokens:
            report.drop(f"longer than {max_prompt_tokens} tokens (max_prompt_tokens)", where)
            continue
        seen.add(text)
        out.append(text)
    return out


@dataclass
class PromptSplit:
    """Training and held-out prompt strings, and what was read and left out for each.

    Attributes:
        train, eval: the prompts, in source order.
        train_report, eval_report: rows seen and dropped (with why) on the way to each list.
        metadata: prompt -> what its source carries to the reward (``answer``: a reference answer); prompts
            without any are absent.
    """

    train: list[str]
    eval: list[str]
    train_report: DropReport = field(default_factory=DropReport)
    eval_report: DropReport = field(default_factory=DropReport)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        """Two blocks: the training prompts' account, then the held-out prompts'."""
        return "\n".join([f"training prompts: {self.train_report.summary()}",
                          f"held-out prompts: {self.eval_report.summary()}"])


def _capped(prompts: list[str], cap: int | None, report: DropReport, key: str) -> list[str]:
    if cap is not None and len(prompts) > cap:
        report.drop(f"beyond {key} ({cap})", count=len(prompts) - cap)
        return prompts[:cap]
    return prompts


def split_prompts(prompts: Sequence[str], report: DropReport, *, test_size: float | int, seed: int,
                  num_prompts: int | None, num_eval_prompts: int, field: str = "prompts") -> PromptSplit:
    """A seeded split of one list of prompts: ``test_size`` held out (at most ``num_eval_prompts``), the rest trains.

    The held-out prompts are a seeded random subset (:func:`random.Random` shuffle of the positions, as
    :func:`alignkit.data.split.split_train_test`); both lists keep the source order. ``num_prompts`` caps training
    at the first N. ``report`` (every row read) becomes the training report; the held-out report counts the
    held-out prompts as its rows.
    """
    try:
        n_test = min(held_out_count(len(prompts), test_size), num_eval_prompts)
    except ValueError as err:
        raise DataError(f"{field}.test_size: {err}") from None
    if len(prompts) < 2 or n_test < 1:
        raise DataError(f"{field}: {len(prompts)} usable prompt(s): too few to hold some out for evaluation\n"
                        f"{report.summary()}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_test])
    train = [p for i, p in enumerate(prompts) if i not in held]
    held_out = [p for i, p in enumerate(prompts) if i in held]
    report.drop(f"held out for evaluation ({field}.test_size)", count=len(held_out))
    train = _capped(train, num_prompts, report, f"{field}.num_prompts")
    return PromptSplit(train, held_out, report, DropReport(seen=len(held_out)))


def _iter_dataset(ds: Any, report: DropReport) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(ds):
        report.seen += 1
        yield f"row {i}", row
