"""`alignkit serve`: an OpenAI-compatible chat-completions server over a local model or a run folder.

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
``stop``, ``n=1``; no streaming), ``GET /v1/models`` and ``GET /health``; for online rollouts, vLLM's contract:
``POST /v1/completions`` (token ids in, ``n`` samples with their token ids and log-probs out,
:mod:`alignkit.commands.serve_completions`), ``POST /v1/load_lora_adapter`` and ``POST /v1/load_weights`` (new
weights under a new name, :mod:`alignkit.commands.serve_weights`), each answer naming the version that gave it. One model answers one request at a
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
- at most ``max_connections`` connections are open; one waiting for its next request must send the request
  line and headers within ``header_timeout_s`` in all, and gives its place to a new connection when every
  place is taken (:mod:`alignkit.commands.serve_connections`), so idle or slow sockets cannot starve
  ``/health`` or a real request;
- a connection stalled for ``timeout_s`` while a request is read or answered is closed;
- a client that disconnects early (before, during or after its answer) costs a log line, never a traceback;
- a ``temperature`` below :data:`~alignkit.models.sampling.GREEDY_BELOW_TEMPERATURE` (1e-5) decodes greedily
  (``1e-300`` would overflow the logits); a lone UTF-16 surrogate in the body is answered 400;
- every request field is checked (types and ranges; JSON ``true`` is not a number, ``NaN`` is not JSON
  here) and a bad one answered 400 with a JSON error that names it.

This module is the HTTP side; the model answering is :class:`~alignkit.commands.serve_model.ChatModel`, and
the request validation and limits live in :mod:`alignkit.commands.serve_requests`.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from alignkit.commands.serve_completions import text_completion
from alignkit.commands.serve_connections import ConnectionTable, refuse_busy
from alignkit.commands.serve_model import ChatModel, GenerationCancelled
from alignkit.commands.serve_requests import (
    RequestError,
    ServerLimits,
    parse_completion_request,
    parse_load_request,
    parse_request,
)
from alignkit.jsonio import to_json

__all__ = ["ChatModel", "GenerationCancelled", "RequestError", "ServerLimits", "make_server", "parse_request"]

LogFn = Callable[[str], None]


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


class _ChatHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests with ``chat``, within ``limits``.

    Args:
        chat: the model.
        limits: body size and timeout limits (the queue is ``pending``).
        log: optional ``fn(str)`` called with one line per request.
        pending: one slot per chat request generating or waiting for the model, shared by all connections.
        *args: the request, client address and server, as ``socketserver`` passes them.
    """

    protocol_version = "HTTP/1.1"

    def __init__(self, chat: ChatModel, limits: ServerLimits, log: LogFn | None, pending: threading.BoundedSemaphore,
                 *args: Any) -> None:
        self.chat_model = chat
        self.limits = limits
        self.log_line = log
        self.pending = pending
        super().__init__(*args)  # handles the connection's requests

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.limits.timeout_s)  # stalled requests end

    def handle_one_request(self) -> None:
        # Waiting for a request: the whole request line and headers are due within header_timeout_s.
        self.server.connections.waiting(self.connection)  # type: ignore[attr-defined]
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers
        self.server.connections.busy(self.connection)  # type: ignore[attr-defined]  # no header deadline now
        return parsed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.log_line is not None:
            self.log_line(f"{self.address_string()} {format % args}")

    def _send(self, status: int, payload: dict[str, Any], *, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        data = to_json(payload, indent=None).encode("utf-8")
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
                {"id": name, "object": "model", "created": 0, "owned_by": "alignkit"}
                for name in self.chat_model.weights.names]})
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
        if size > self.limits.max_body_bytes:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"request body of {size} bytes is over this server's limit of {self.limits.max_body_bytes}",
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

    def _arguments(self, parse: Callable[[bytes], Any]) -> Any:
        """``parse`` of the request body, or None after answering why there is none."""
        body = self._read_body()
        if body is None:
            return None
        try:
            return parse(body)
        except RequestError as err:
            self._error(err.status, str(err))
            return None

    def _answer(self, answer: Callable[[], dict[str, Any]], max_tokens: int) -> dict[str, Any] | None:
        """``answer()`` (a generation), or None after answering why there is no completion."""
        try:
            return answer()
        except GenerationCancelled as err:
            self.close_connection = True
            self.log_message("generation cancelled after %d of %d tokens: the client disconnected",
                             err.generated, max_tokens)
        except RequestError as err:
            self._error(err.status, str(err))
        except Exception as err:  # noqa: BLE001 - any model failure is the server's, and says what
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}", "server_error")
        return None

    def _queued(self, answer: Callable[[], dict[str, Any]], max_tokens: int) -> dict[str, Any] | None:
        """:meth:`_answer` within the bound on pending requests (503 at once beyond it)."""
        if not self.pending.acquire(blocking=False):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                        f"server busy: {self.limits.max_pending} requests are already generating or waiting; retry "
                        "later", "server_overloaded", headers={"Retry-After": "1"})
            return None
        try:
            return self._answer(answer, max_tokens)
        finally:
            self.pending.release()

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        route = self.path.rstrip("/").removeprefix("/v1")
        chat = self.chat_model
        if route == "/chat/completions":
            args = self._arguments(partial(parse_request, max_tokens_limit=chat.max_tokens))
            if args is not None:
                result = self._queued(partial(chat.chat, **args, cancelled=_Disconnection(self.connection)),
                                      args["max_tokens"])
                if result is not None:
                    self._send(200, _chat_completion(chat.name, result))
        elif route == "/completions":
            args = self._arguments(partial(parse_completion_request, max_tokens_limit=chat.max_tokens,
                                           vocab_size=chat.vocab_size))
            if args is not None:
                result = self._queued(partial(chat.complete, args["prompt"], model=args["model"], n=args["n"],
                                              max_tokens=args["max_tokens"], temperature=args["temperature"],
                                              top_p=args["top_p"], seed=args["seed"],
                                              cancelled=_Disconnection(self.connection)), args["max_tokens"])
                if result is not None:
                    self._send(200, text_completion(result, args, chat.tokenizer))
        elif route in ("/load_lora_adapter", "/load_weights"):
            fields = ("lora_name", "lora_path") if route == "/load_lora_adapter" else ("model_name", "model_path")
            load = chat.load_lora if route == "/load_lora_adapter" else chat.load_full
            args = self._arguments(partial(parse_load_request, name_field=fields[0], path_field=fields[1]))
            if args is not None:
                result = self._answer(lambda: {"status": "ok", "message": load(*args)}, 0)
                if result is not None:
                    self._send(200, result)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found", close=True)


def _chat_completion(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """The chat-completion object of one :meth:`ChatModel.chat` result."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                     "finish_reason": result["finish_reason"]}],
        "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                  "total_tokens": result["prompt_tokens"] + result["completion_tokens"]},
    }


class _Server(ThreadingHTTPServer):
    """The threading server with a bounded table of connections, quiet about clients that leave early."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts of connections wait to be accepted, not reset

    def __init__(self, address: tuple[str, int], handler: Any, limits: ServerLimits, log: LogFn | None) -> None:
        self.connections = ConnectionTable(limits.max_connections, limits.header_timeout_s)
        self.log_line = log
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.admit(request):  # every place busy with a request
            refuse_busy(request, len(self.connections))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.forget(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        self.connections.close()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that disconnected (or was closed for being idle) is one log line; anything else is
        the standard library's traceback."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError, OSError)):
            if self.log_line is not None:
                self.log_line(f"{client_address[0]} connection ended early: {type(err).__name__}")
            return
        super().handle_error(request, client_address)


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, *, log: LogFn | None = None,
                limits: ServerLimits | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) answering with ``chat``.

    Args:
        chat: the model (its ``max_tokens`` bounds every request's).
        host: interface to bind (127.0.0.1 = this machine only).
        port: TCP port; 0 picks a free one (read it from ``server.server_address``).
        log: optional ``fn(str)`` called with one line per request (and per cancelled generation).
        limits: body size, queue, connection and timeout limits (default :class:`ServerLimits`()).
    """
    limits = limits or ServerLimits()
    pending = threading.BoundedSemaphore(limits.max_pending)
    return _Server((host, port), partial(_ChatHandler, chat, limits, log, pending), limits, log)
