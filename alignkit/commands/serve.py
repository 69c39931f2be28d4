"""`alignkit serve`: an OpenAI-compatible chat-completions server over a local model or a run folder.

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
``stop``; no streaming), ``GET /v1/models`` and ``GET /health``. One model answers one request at a time
(a lock serializes generation); the HTTP layer is the standard library's threading server, so slow
clients do not block each other's connections. Meant for local use: talking to a tuned model, or serving
a local model as the judge of ``eval.judge.kind: openai``. It does not check API keys.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch import nn

from alignkit.models.generate import eos_token_ids

__all__ = ["ChatModel", "RequestError", "make_server"]


class RequestError(ValueError):
    """A request the server cannot answer; the message is sent back with status 400."""


def _plain_chat(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


class ChatModel:
    """A causal LM answering chat requests, one at a time.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (chat template used when it has one, else "role: content" lines).
        name: the model id reported by ``/v1/models`` and in answers.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = eos_token_ids(model, tokenizer)
        config = getattr(model, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self._lock = threading.Lock()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(_plain_chat(messages))["input_ids"])

    @torch.inference_mode()
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 64, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None) -> dict[str, Any]:
        """One completion: ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``."""
        ids = self.prompt_ids(messages)
        if self.max_positions:
            if max_tokens >= self.max_positions:
                raise RequestError(f"max_tokens must be below the model's context of {self.max_positions} tokens")
            ids = ids[-(self.max_positions - max_tokens):]  # keep the end: the latest turn and the reply slot
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        device = next(self.model.parameters()).device
        with self._lock, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                                                                                      device=device),
                max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids,
                **sampling,
            )
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


def _parse_request(body: bytes) -> dict[str, Any]:
    """Validated generation arguments of a chat-completions request body."""
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"request body is not JSON: {err}") from None
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}] must be an object with string 'role' and 'content'")
    if req.get("stream"):
        raise RequestError("streaming is not supported; leave 'stream' unset")
    max_tokens = req.get("max_tokens", req.get("max_completion_tokens", 64))
    temperature = req.get("temperature", 1.0)
    top_p = req.get("top_p", 1.0)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("'max_tokens' must be a positive integer")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise RequestError("'temperature' must be a number >= 0")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise RequestError("'top_p' must be in (0, 1]")
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or a list of strings")
    seed = req.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise RequestError("'seed' must be an integer")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "max_tokens": max_tokens,
            "temperature": float(temperature), "top_p": float(top_p), "seed": seed, "stop": stop}


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, *, log=None) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) answering with ``chat``.

    Args:
        chat: the model.
        host: interface to bind (127.0.0.1 = this machine only).
        port: TCP port; 0 picks a free one (read it from ``server.server_address``).
        log: optional ``fn(str)`` called with one line per request.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            if log is not None:
                log(f"{self.address_string()} {format % args}")

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": status.value}})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": chat.name, "object": "model", "created": 0, "owned_by": "alignkit"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found")
                return
            try:
                args = _parse_request(body)
                result = chat.chat(**args)
            except RequestError as err:
                self._error(HTTPStatus.BAD_REQUEST, str(err))
                return
            except Exception as err:  # noqa: BLE001 - any model failure is the server's, and says what
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}", "server_error")
                return
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
