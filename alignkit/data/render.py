"""Turn an example into prompt/response *text*: through a chat template, or as plain dialogue text.

With a chat template the prompt is ``apply_chat_template(prompt, add_generation_prompt=True)`` and a
response is ``apply_chat_template(prompt + response)`` minus that prompt prefix (rows where the template
does not reproduce the prompt as a prefix are dropped and counted). Trailing whitespace after the
template's end-of-turn marker is removed: it is never generated before the model stops.

Without a template, messages are written in the HH-RLHF style (``"\\n\\nHuman: ..."``,
``"\\n\\nAssistant: ..."``): the prompt ends with ``"\\n\\nAssistant:"`` and the response starts with a
space, the same convention as :mod:`alignkit.data.hh_rlhf`.
"""

from __future__ import annotations

from alignkit.data.hh_rlhf import ASSISTANT, HUMAN
from alignkit.data.types import DataError, Message, PreferenceExample, TextOrMessages

__all__ = ["hh_text_to_messages", "render_example", "render_prompt", "resolve_chat_template"]

_PLAIN_ROLE = {"user": HUMAN, "assistant": ASSISTANT}


def resolve_chat_template(tokenizer, requested: bool | None, any_conversational: bool) -> bool:
    """Whether to render with the tokenizer's chat template (see ``DataConfig.chat_template``)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested is True and not has_template:
        raise DataError("data.chat_template is true but the tokenizer has no chat template")
    if requested is None:
        return has_template and any_conversational
    return requested


def hh_text_to_messages(text: str) -> list[Message]:
    """Split ``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` text into messages; other text is one user turn.

    A trailing empty ``"\\n\\nAssistant:"`` (the generation cue of an HH prompt) is dropped.
    """
    if not text.startswith(HUMAN):
        return [{"role": "user", "content": text.strip()}]
    messages: list[Message] = []
    rest = text
    while rest:
        role = "user" if rest.startswith(HUMAN) else "assistant"
        rest = rest[len(HUMAN if role == "user" else ASSISTANT):]
        cuts = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0]
        end = min(cuts) if cuts else len(rest)
        messages.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _plain(messages: list[Message]) -> str:
    parts = []
    for m in messages:
        prefix = _PLAIN_ROLE.get(m["role"], f"\n\n{m['role'].capitalize()}:")
        parts.append(f"{prefix} {m['content'].strip()}")
    return "".join(parts)


def _plain_response(response: TextOrMessages) -> str:
    if isinstance(response, str):
        return response
    if not response:
        return ""
    # The first assistant message continues the prompt's "Assistant:" cue; later turns keep their role.
    first, rest = response[0], response[1:]
    return " " + first["content"].strip() + _plain(rest)


def _as_messages(value: TextOrMessages, role: str) -> list[Message]:
    if not isinstance(value, str):
        return value
    if role == "user":
        return hh_text_to_messages(value)
    return [{"role": role, "content": value.strip()}]


def render_prompt(prompt: TextOrMessages, tokenizer, use_template: bool) -> str:
    """The text a response follows: the chat template with its generation cue, or the plain rendering.

    Without a template, text passes through unchanged and messages become HH-style text ending with
    ``"\\n\\nAssistant:"``; with one, an HH-style text prompt is split into turns first.
    """
    if not use_template:
        return prompt if isinstance(prompt, str) else _plain(prompt) + ASSISTANT
    return tokenizer.apply_chat_template(_as_messages(prompt, "user"), tokenize=False, add_generation_prompt=True)


def render_example(
    ex: PreferenceExample, tokenizer, use_template: bool, with_rejected: bool = True
) -> tuple[str, list[str]] | None:
    """``(prompt_text, [chosen_text, rejected_text])``, or None when the template breaks the prefix.

    Plain-text examples pass through unchanged unless ``use_template`` (then an HH-style text prompt is
    split into turns first, so chat models see real turns). ``with_rejected=False`` renders the chosen
    response only (supervised fine-tuning).
    """
    fields = [ex.chosen, ex.rejected] if with_rejected else [ex.chosen]
    prompt_text = render_prompt(ex.prompt, tokenizer, use_template)
    if not use_template:
        return prompt_text, [_plain_response(r) for r in fields]

    prompt_msgs = _as_messages(ex.prompt, "user")
    responses = []
    for response in fields:
        full = tokenizer.apply_chat_template(
            prompt_msgs + _as_messages(response, "assistant"), tokenize=False
        )
        if not full.startswith(prompt_text):
            return None
        responses.append(full[len(prompt_text):].rstrip())
    return prompt_text, responses
