"""`alignkit serve`: an OpenAI-compatible chat-completions server over a local model or a run folder.

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
``stop``, ``n=1``; no streaming), ``GET /v1/models`` and ``GET /health``. One model answers one request at a
time (a lock serializes generation); the HTTP layer is the standard library's threading server, so slow
clients do not block each other's connections. Meant for local use: talking to a tuned model, or serving
a local model as the judge of ``eval.judge.kind: openai``. It does not check API keys.

Limits (:class:`ServerLimits`), so that one client cannot take the server down:

- a request body over ``max_body_bytes`` is answered 413 without being read; a missing, malformed or
  negative ``Content-Length`` (or a chunked body) is answered 400;
- at most ``max_pending`` chat requests generate or wait for the model; one more is answered 503 at once
  (with ``Retry-After``), never left to time out or be reset;
- ``max_tokens`` is at most the server's maximum (``--max-tokens``), itself below the model's context;
- a client that disconnects stops its generation (checked between generated tokens) and leaves the queue;
- a connection idle or stalled for ``timeout_s`` is closed;
- every request field is checked (types and ranges; JSON ``true`` is not a number, ``NaN`` is not JSON
  here) and a bad one answered 400 with a JSON error that names it.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from alignkit.models.generate import SupportsGenerate, eos_token_ids

__all__ = ["ChatModel", "GenerationCancelled", "RequestError", "ServerLimits", "make_server", "parse_request"]

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**63 - 1
DEFAULT_MAX_TOKENS = 64  # a request's max_tokens when it sets none (capped by the server's maximum)
# Request fields this server does not implement, with the values that ask for nothing (accepted and ignored).
_NEUTRAL = {"presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,), "top_logprobs": (0,),
            "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},),
            "store": (False,), "parallel_tool_calls": (True, False), "stream_options": ()}
_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
          "stream", "user"}


class RequestError(ValueError):
    """A request the server cannot answer; the message is sent back as a JSON error with ``status``."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class GenerationCancelled(Exception):
    """The client went away: generation stopped (or never started) after ``generated`` tokens."""

    def __init__(self, generated: int) -> None:
        super().__init__(f"cancelled after {generated} generated tokens")
        self.generated = generated


@dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of the server.

    Attributes:
        max_body_bytes: largest request body read; a larger one is answered 413 unread.
        max_pending: chat requests generating or waiting for the model at once; more are answered 503.
        timeout_s: a connection silent this long (idle between requests, or stalled mid-request) is closed.
    """

    max_body_bytes: int = 1 << 20
    max_pending: int = 8
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_pending < 1 or not self.timeout_s > 0:
            raise ValueError("ServerLimits needs max_body_bytes >= 1, max_pending >= 1 and timeout_s > 0")


def _plain_chat(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


class _StopWhen(StoppingCriteria):
    """A ``generate`` stopping criterion: stop every row as soon as ``cancelled()`` says so."""

    def __init__(self, cancelled: Callable[[], bool], prompt_length: int) -> None:
        self.cancelled = cancelled
        self.prompt_length = prompt_length
        self.generated: int | None = None  # tokens generated when it fired

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        stop = bool(self.cancelled())
        if stop:
            self.generated = input_ids.shape[1] - self.prompt_length
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ChatModel:
    """A causal LM answering chat requests, one at a time.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (chat template used when it has one, else "role: content" lines).
        name: the model id reported by ``/v1/models`` and in answers.
        max_tokens: the most tokens one request may generate; capped below the model's context (when
            its config names one), so that a prompt token always fits.

    Attributes:
        max_tokens: the effective maximum.
        max_positions: the model's context in tokens, or None when its config does not say.

    Raises:
        ValueError: ``max_tokens`` is below 1.
        TypeError: ``model`` has no ``generate`` method.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str, *, max_tokens: int = 1024) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not isinstance(model, SupportsGenerate):
            raise TypeError(f"{type(model).__name__} has no generate(): serving needs a causal LM with "
                            "transformers' generate API")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = eos_token_ids(model, tokenizer)
        config = getattr(model, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_tokens = min(max_tokens, self.max_positions - 1) if self.max_positions else max_tokens
        self._lock = threading.Lock()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the assistant's turn.

        Raises:
            RequestError: the chat template refuses the conversation (e.g. roles out of order).
        """
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as err:  # noqa: BLE001 - jinja's TemplateError and whatever the template raises
                raise RequestError(f"the model's chat template refuses these messages: {err}") from None
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(_plain_chat(messages))["input_ids"])

    @torch.inference_mode()
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
             cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One completion: ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``.

        Args:
            messages: ``{"role", "content"}`` dicts.
            max_tokens: the most tokens generated, at most :attr:`max_tokens`.
            temperature: 0 for greedy decoding.
            top_p: nucleus mass.
            seed: sampling seed (the global RNG state is restored afterwards).
            stop: strings that end the answer (cut from the text).
            cancelled: polled while waiting for the model and between generated tokens; True stops.

        Raises:
            RequestError: ``max_tokens`` above the maximum, or messages the chat template refuses.
            GenerationCancelled: ``cancelled()`` turned True.
        """
        if not 1 <= max_tokens <= self.max_tokens:
            raise RequestError(f"'max_tokens' must be between 1 and {self.max_tokens} (this server's maximum"
                               + (f"; the model's context is {self.max_positions} tokens" if self.max_positions else "")
                               + ")")
        ids = self.prompt_ids(messages)
        if self.max_positions:
            ids = ids[-(self.max_positions - max_tokens):]  # keep the end: the latest turn and the reply slot
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        device = next(self.model.parameters()).device
        stopping: dict[str, Any] = {}
        watch = None
        if cancelled is not None:
            watch = _StopWhen(cancelled, len(ids))
            stopping = {"stopping_criteria": StoppingCriteriaList([watch])}
            # Waiting for the model: poll, so that a client gone meanwhile leaves the queue.
            while not self._lock.acquire(timeout=0.05):
                if cancelled():
                    raise GenerationCancelled(0)
        else:
            self._lock.acquire()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(
                    input_ids=torch.tensor([ids], device=device),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                    max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids,
                    **sampling, **stopping,
                )
        finally:
            self._lock.release()
        if watch is not None and watch.generated is not None:
            raise GenerationCancelled(watch.generated)
        new = out[0, len(ids):].tolist()
        finish = "length"
        for pos, token in enumerate(new):
            if token in self.eos_ids:
                new, finish = new[:pos], "stop"
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return {"text": text, "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(new)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, and bool is an int


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _reject_constant(name: str) -> Any:
    raise RequestError(f"request body is not JSON: {name} is not a JSON number")


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


def parse_request(body: bytes, *, max_tokens_limit: int) -> dict[str, Any]:
    """Validated generation arguments of a chat-completions request body.

    Args:
        body: the raw request body.
        max_tokens_limit: the largest ``max_tokens`` accepted (:attr:`ChatModel.max_tokens`).

    Returns:
        Keyword arguments of :meth:`ChatModel.chat`.

    Raises:
        RequestError: the body is not a JSON object, or a field has the wrong type or range, or asks for
            something this server does not do (streaming, n > 1, tools...).
    """
    try:
        req = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RequestError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise RequestError(f"request body is not JSON: {str(err)[:200]}") from None
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object")
    unsupported = sorted(k for k, v in req.items()
                         if k not in _KNOWN and v is not None and v not in _NEUTRAL.get(k, ()))
    if unsupported:
        raise RequestError(f"unsupported request field(s): {', '.join(unsupported)}")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    for key in ("model", "user"):
        if req.get(key) is not None and not isinstance(req[key], str):
            raise RequestError(f"'{key}' must be a string")
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false")
    if stream:
        raise RequestError("streaming is not supported; leave 'stream' unset")
    n = req.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise RequestError("'n' must be 1: this server answers one completion per request")
    max_tokens = req.get("max_completion_tokens")
    if req.get("max_tokens") is not None:
        if max_tokens is not None and max_tokens != req["max_tokens"]:
            raise RequestError("'max_tokens' and 'max_completion_tokens' disagree; send one of them")
        max_tokens = req["max_tokens"]
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, max_tokens_limit)
    if not _is_int(max_tokens) or max_tokens < 1:
        raise RequestError("'max_tokens' must be a positive integer")
    if max_tokens > max_tokens_limit:
        raise RequestError(f"'max_tokens' must be at most {max_tokens_limit} (this server's maximum)")
    temperature = req.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be a number in [0, 2]")
    top_p = req.get("top_p")
    top_p = 1.0 if top_p is None else top_p
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise RequestError("'top_p' must be a number in (0, 1]")
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES
                                 and all(isinstance(s, str) and s for s in stop)):
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them")
    seed = req.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        raise RequestError("'seed' must be an integer in [0, 2**63 - 1]")
    return {"messages": parsed, "max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p),
            "seed": seed, "stop": stop}


class _Disconnection:
    """Whether the client of a connection has gone: its socket reads as closed (EOF) or fails.

    Only the socket is peeked, never read: a client that pipelines its next request is still there. A
    client that half-closes its side after sending a request looks gone too.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            self._poll.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)

    def __call__(self) -> bool:
        try:
            if self._poll is not None:
                if not self._poll.poll(0):
                    return False
            elif not select.select([self.sock], [], [], 0)[0]:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts of connections wait to be accepted, not reset


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, *, log: Callable[[str], None] | None = None,
                limits: ServerLimits | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) answering with ``chat``.

    Args:
        chat: the model (its ``max_tokens`` bounds every request's).
        host: interface to bind (127.0.0.1 = this machine only).
        port: TCP port; 0 picks a free one (read it from ``server.server_address``).
        log: optional ``fn(str)`` called with one line per request (and per cancelled generation).
        limits: body size, queue and timeout limits (default :class:`ServerLimits`()).
    """
    server_limits = limits or ServerLimits()  # a new name: `limits` stays Optional inside Handler for mypy
    pending = {"count": 0}
    pending_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server_limits.timeout_s  # socket timeout: idle keep-alive and stalled requests end

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            if log is not None:
                log(f"{self.address_string()} {format % args}")

        def _send(self, status: int, payload: dict[str, Any], *, close: bool = False,
                  headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if close:  # the body was not read: the connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error", *,
                   close: bool = False, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": status.value}}, close=close,
                       headers=headers)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """The standard library's own errors (bad request line, headers too long...) as JSON too."""
            try:
                status = HTTPStatus(code)
            except ValueError:
                status = HTTPStatus.BAD_REQUEST
            self.close_connection = True
            self._error(status, message or status.phrase, close=True)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": chat.name, "object": "model", "created": 0, "owned_by": "alignkit"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found", close=True)

        def _body_size(self) -> int | None:
            """The announced body size, or None after answering why the body will not be read."""
            if self.headers.get("Transfer-Encoding"):
                self._error(HTTPStatus.BAD_REQUEST, "chunked request bodies are not supported; send Content-Length",
                            close=True)
                return None
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                self._error(HTTPStatus.BAD_REQUEST, "a Content-Length header is required", close=True)
                return None
            text = lengths[0].strip()
            if len(set(lengths)) > 1 or not (text.isascii() and text.isdigit()):
                self._error(HTTPStatus.BAD_REQUEST, "Content-Length must be one non-negative integer", close=True)
                return None
            size = int(text)
            if size > server_limits.max_body_bytes:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"request body of {size} bytes is over this server's limit of {server_limits.max_body_bytes}",
                            close=True)
                return None
            return size

        def handle_expect_100(self) -> bool:
            """Check the announced body before asking for it: a client that sent ``Expect: 100-continue``
            (curl does for large bodies) gets its 413 or 400 without having uploaded anything."""
            if self.command == "POST" and self._body_size() is None:
                return False
            return super().handle_expect_100()

        def _read_body(self) -> bytes | None:
            """The request body, or None after answering why it will not be read."""
            size = self._body_size()
            if size is None:
                return None
            body = self.rfile.read(size)
            if len(body) < size:  # the client closed mid-body
                self.close_connection = True
                return None
            return body

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found", close=True)
                return
            body = self._read_body()
            if body is None:
                return
            try:
                args = parse_request(body, max_tokens_limit=chat.max_tokens)
            except RequestError as err:
                self._error(err.status, str(err))
                return
            with pending_lock:
                busy = pending["count"] >= server_limits.max_pending
                if not busy:
                    pending["count"] += 1
            if busy:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                            f"server busy: {server_limits.max_pending} requests are already generating or waiting; retry "
                            "later", "server_overloaded", headers={"Retry-After": "1"})
                return
            try:
                result = chat.chat(**args, cancelled=_Disconnection(self.connection))
            except GenerationCancelled as err:
                self.close_connection = True
                self.log_message("generation cancelled after %d of %d tokens: the client disconnected",
                                 err.generated, args["max_tokens"])
                return
            except RequestError as err:
                self._error(err.status, str(err))
                return
            except Exception as err:  # noqa: BLE001 - any model failure is the server's, and says what
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}", "server_error")
                return
            finally:
                with pending_lock:
                    pending["count"] -= 1
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                             "finish_reason": result["finish_reason"]}],
                "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                          "total_tokens": result["prompt_tokens"] + result["completion_tokens"]},
            })

    return _Server((host, port), Handler)
