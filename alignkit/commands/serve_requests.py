"""What `alignkit serve` accepts: the server's limits and the validation of a chat-completions request.

Every field of a request body is checked (types and ranges; JSON ``true`` is not a number, ``NaN`` is not
JSON here); a bad one raises :class:`RequestError`, which the server answers with a JSON error naming it.
Fields this server does not implement are accepted only with the values that ask for nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_CHOICES", "RequestError", "ServerLimits", "parse_completion_request",
           "parse_load_request", "parse_request"]

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOKENS = 64  # a request's max_tokens when it sets none (capped by the server's maximum)
# Request fields this server does not implement, with the values that ask for nothing (accepted and ignored).
_NEUTRAL = {"presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,), "top_logprobs": (0,),
            "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},),
            "store": (False,), "parallel_tool_calls": (True, False), "stream_options": ()}
_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
          "stream", "user"}
# /v1/completions (vLLM's extensions included): the prompt as text or token ids, n samples, the sampled tokens'
# log-probs, tokens written as "token_id:<id>", the completion's token ids.
_COMPLETION_KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "n", "stream", "user",
                     "logprobs", "return_tokens_as_token_ids", "return_token_ids"}
_COMPLETION_NEUTRAL = {"presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "echo": (False,),
                       "best_of": (1,), "suffix": ("",), "stream_options": ()}
MAX_CHOICES = 64  # n: completions of one prompt in one request (a rollout's samples per prompt)


class RequestError(ValueError):
    """A request the server cannot answer; the message is sent back as a JSON error with ``status``."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of the server.

    Attributes:
        max_body_bytes: largest request body read; a larger one is answered 413 unread.
        max_pending: chat requests generating or waiting for the model at once; more are answered 503.
        timeout_s: a connection silent this long while a request is being read or answered is closed.
        max_connections: connections open at once; a new one takes the place of the oldest that is only
            waiting for a request, and is answered 503 when every one is busy.
        header_timeout_s: a connection waiting for its next request must send the request line and headers
            within this many seconds in all (however slowly it trickles them), or it is closed.
    """

    max_body_bytes: int = 1 << 20
    max_pending: int = 8
    timeout_s: float = 60.0
    max_connections: int = 64
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.max_body_bytes < 1 or self.max_pending < 1 or not self.timeout_s > 0 or self.max_connections < 1
                or not self.header_timeout_s > 0):
            raise ValueError("ServerLimits needs max_body_bytes, max_pending and max_connections >= 1, and "
                             "timeout_s and header_timeout_s > 0")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, and bool is an int


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _reject_constant(name: str) -> Any:
    raise RequestError(f"request body is not JSON: {name} is not a JSON number")


def _check_text(value: Any) -> None:
    """Refuse a string (or key) holding a lone UTF-16 surrogate: JSON may escape one ("\\ud800"), yet it is
    not text, and no tokenizer can encode it."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RequestError(f"request body holds a lone UTF-16 surrogate ({value[err.start]!r}), which is not "
                               "text") from None


def _json_object(body: bytes, known: set[str] | None = None,
                 neutral: dict[str, tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """The body as a JSON object with no unsupported field (of a chat request unless ``known`` says)."""
    known = _KNOWN if known is None else known
    neutral = _NEUTRAL if neutral is None else neutral
    try:
        req = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RequestError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise RequestError(f"request body is not JSON: {str(err)[:200]}") from None
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object")
    try:
        _check_text(req)
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    unsupported = sorted(k for k, v in req.items()
                         if k not in known and v is not None and v not in neutral.get(k, ()))
    if unsupported:
        raise RequestError(f"unsupported request field(s): {', '.join(unsupported)}")
    return req


def _message(i: int, m: Any) -> dict[str, str]:
    if not isinstance(m, dict):
        raise RequestError(f"messages[{i}] must be an object with string 'role' and 'content'")
    if m.get("role") not in ROLES:
        raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
    content = m.get("content")
    if isinstance(content, list):  # content parts: only text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise RequestError(f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are supported")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(f"messages[{i}] must be an object with string 'role' and 'content'")
    for key, value in m.items():
        if key not in ("role", "content", "name") and value is not None:
            raise RequestError(f"messages[{i}].{key} is not supported")
    if "name" in m and not isinstance(m["name"], (str, type(None))):
        raise RequestError(f"messages[{i}].name must be a string")
    return {"role": m["role"], "content": content}


def _messages(req: dict[str, Any]) -> list[dict[str, str]]:
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    return [_message(i, m) for i, m in enumerate(messages)]


def _check_plain_answer(req: dict[str, Any], max_choices: int = 1) -> int:
    """String ``model`` and ``user``; no streaming; at most ``max_choices`` completions. Returns ``n``."""
    for key in ("model", "user"):
        if req.get(key) is not None and not isinstance(req[key], str):
            raise RequestError(f"'{key}' must be a string")
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false")
    if stream:
        raise RequestError("streaming is not supported; leave 'stream' unset")
    n = req.get("n")
    if n is None:
        return 1
    if max_choices == 1 and not (_is_int(n) and n == 1):
        raise RequestError("'n' must be 1: this server answers one completion per chat request")
    if not (_is_int(n) and 1 <= n <= max_choices):
        raise RequestError(f"'n' must be an integer in [1, {max_choices}]")
    return n


def _max_tokens(req: dict[str, Any], limit: int) -> int:
    max_tokens = req.get("max_completion_tokens")
    if req.get("max_tokens") is not None:
        if max_tokens is not None and max_tokens != req["max_tokens"]:
            raise RequestError("'max_tokens' and 'max_completion_tokens' disagree; send one of them")
        max_tokens = req["max_tokens"]
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, limit)
    if not _is_int(max_tokens) or max_tokens < 1:
        raise RequestError("'max_tokens' must be a positive integer")
    if max_tokens > limit:
        raise RequestError(f"'max_tokens' must be at most {limit} (this server's maximum)")
    return max_tokens


def _temperature_and_top_p(req: dict[str, Any]) -> tuple[float, float]:
    temperature = req.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be a number in [0, 2]")
    top_p = req.get("top_p")
    top_p = 1.0 if top_p is None else top_p
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise RequestError("'top_p' must be a number in (0, 1]")
    return float(temperature), float(top_p)


def _stop(req: dict[str, Any]) -> list[str] | None:
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES
                                 and all(isinstance(s, str) and s for s in stop)):
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them")
    return stop


def _seed(req: dict[str, Any], bits: int = 63) -> int | None:
    seed = req.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**bits):
        raise RequestError(f"'seed' must be an integer in [0, 2**{bits} - 1]")
    return seed


def parse_request(body: bytes, *, max_tokens_limit: int) -> dict[str, Any]:
    """Validated generation arguments of a chat-completions request body.

    Args:
        body: the raw request body.
        max_tokens_limit: the largest ``max_tokens`` accepted
            (:attr:`alignkit.commands.serve_model.ChatModel.max_tokens`).

    Returns:
        Keyword arguments of :meth:`alignkit.commands.serve_model.ChatModel.chat`.

    Raises:
        RequestError: the body is not a JSON object, or a field has the wrong type or range, or asks for
            something this server does not do (streaming, n > 1, tools...).
    """
    req = _json_object(body)
    messages = _messages(req)
    _check_plain_answer(req)
    max_tokens = _max_tokens(req, max_tokens_limit)
    temperature, top_p = _temperature_and_top_p(req)
    stop = _stop(req)
    return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": _seed(req), "stop": stop}


def _prompt(req: dict[str, Any], vocab_size: int) -> str | list[int]:
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) and 0 <= t < vocab_size for t in prompt):
        return list(prompt)
    raise RequestError(f"'prompt' must be one non-empty string or one non-empty list of token ids in [0, {vocab_size})")


def _flag(req: dict[str, Any], key: str) -> bool:
    value = req.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false")
    return bool(value)


def parse_completion_request(body: bytes, *, max_tokens_limit: int, vocab_size: int) -> dict[str, Any]:
    """Validated arguments of a ``/v1/completions`` request body (vLLM's field names).

    A ``seed`` may use 64 bits (a rollout group's seed does). ``stop`` strings are not taken (a rollout's token ids and log-probs are the whole sample). ``logprobs`` may be
    0 or 1: both return the log-prob of every sampled token under the distribution it was
    drawn from (``logprobs.token_logprobs``); ``return_tokens_as_token_ids`` writes ``logprobs.tokens`` as
    ``"token_id:<id>"``; ``return_token_ids`` adds each choice's ``token_ids``.

    Args:
        body: the raw request body.
        max_tokens_limit: the largest ``max_tokens`` accepted.
        vocab_size: token ids of a prompt must be below it.

    Returns:
        ``{"model", "prompt", "n", "max_tokens", "temperature", "top_p", "seed", "logprobs",
        "tokens_as_ids", "token_ids"}``.

    Raises:
        RequestError: a field with the wrong type or range, or one this server does not implement.
    """
    req = _json_object(body, _COMPLETION_KNOWN, _COMPLETION_NEUTRAL)
    prompt = _prompt(req, vocab_size)
    n = _check_plain_answer(req, MAX_CHOICES)
    logprobs = req.get("logprobs")
    if logprobs is not None and not (_is_int(logprobs) and logprobs in (0, 1)):
        raise RequestError("'logprobs' must be 0 or 1: this server returns the sampled tokens' log-probs only")
    temperature, top_p = _temperature_and_top_p(req)
    return {"model": req.get("model"), "prompt": prompt, "n": n, "max_tokens": _max_tokens(req, max_tokens_limit),
            "temperature": temperature, "top_p": top_p, "seed": _seed(req, 64), "logprobs": logprobs is not None, "tokens_as_ids": _flag(req, "return_tokens_as_token_ids"),
            "token_ids": _flag(req, "return_token_ids")}


def parse_load_request(body: bytes, name_field: str, path_field: str) -> tuple[Any, Any]:
    """``(name, path)`` of a weight-loading request body (``lora_name``/``lora_path`` or
    ``model_name``/``model_path``); their values are checked by the weights' owner.

    Raises:
        RequestError: not a JSON object, or a field other than the two.
    """
    req = _json_object(body, {name_field, path_field}, {"load_inplace": (False,)})
    return req.get(name_field), req.get(path_field)
