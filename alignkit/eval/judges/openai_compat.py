"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` server.

Requests use the standard library only (urllib) from a bounded thread pool. A request that fails with a
5xx status, 429 (rate limited), a timeout or a lost connection is retried with exponential backoff
(``backoff_s``, then twice that, ...); any other 4xx is a configuration problem and is not retried. The
API key is read from the environment variable the config names, sent only in the Authorization header,
and never logged, cached or shown in ``repr``.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignkit.eval.judges.base import Judge, Verdict
from alignkit.eval.judges.cache import VerdictCache, verdict_key
from alignkit.eval.judges.prompt import PROMPT_VERSION, judge_messages, parse_verdict

__all__ = ["JudgeRequestError", "OpenAIJudge"]


class JudgeRequestError(RuntimeError):
    """A judge request failed for good (after retries, or with a status that retrying cannot fix)."""


def _retryable(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code == 429
    # Timeouts, refused or reset connections and URLError
    # (all OSError subclasses), and answers cut short or not JSON.
    return isinstance(err, (OSError, http.client.HTTPException, json.JSONDecodeError))


class OpenAIJudge(Judge):
    """Pairwise judge over HTTP; verdicts are parsed from the answer text (:func:`parse_verdict`).

    Args:
        base_url: server root including ``/v1``, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name sent in each request (part of the cache key).
        api_key_env: environment variable with the API key; None sends no Authorization header.
        max_concurrency: requests in flight at once.
        timeout_s: seconds to wait for one answer.
        max_retries: retries after a retryable failure.
        backoff_s: first retry delay in seconds; doubles every retry.
        max_tokens: answer length limit.
        temperature: judge sampling temperature.
        cache_path: JSON-lines verdict cache; None disables caching.

    Attributes:
        requests_sent: HTTP requests made so far (retries included); a fully cached rerun makes none.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_tokens: int = 16,
        temperature: float = 0.0,
        cache_path: str | Path | None = None,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cache = VerdictCache(cache_path) if cache_path is not None else None
        self.requests_sent = 0
        self._count_lock = threading.Lock()
        # Fail now, naming the variable (never its value), rather than on the first of many requests.
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise JudgeRequestError(
                f"eval.judge.api_key_env names the environment variable {api_key_env!r}, which is not set; "
                "export it, or set api_key_env: null for a server that needs no key"
            )

    def __repr__(self) -> str:
        return f"OpenAIJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "model": self.model, "prompt_version": PROMPT_VERSION,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _key(self, prompt: str, response_a: str, response_b: str) -> str:
        return verdict_key(url=self.url, model=self.model, version=PROMPT_VERSION, temperature=self.temperature,
                           max_tokens=self.max_tokens, prompt=prompt, a=response_a, b=response_b, order="A,B")

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._count_lock:
            self.requests_sent += 1
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def ask(self, prompt: str, response_a: str, response_b: str) -> str:
        """The judge's answer text for one ordered pair (retrying transient failures).

        Raises:
            JudgeRequestError: a non-retryable status, or still failing after ``max_retries`` retries.
        """
        body = json.dumps({
            "model": self.model,
            "messages": judge_messages(prompt, response_a, response_b),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                answer = self._post(body)
                return str(answer["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError) as err:
                raise JudgeRequestError(f"{self.url}: answer is not a chat completion ({err!r})") from None
            except Exception as err:  # noqa: BLE001 - sorted into retryable or not just below
                if not _retryable(err):
                    raise
                if attempt == self.max_retries:
                    raise JudgeRequestError(
                        f"{self.url}: failed after {self.max_retries + 1} attempts: {_describe(err)}"
                    ) from None
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        key = self._key(prompt, response_a, response_b)
        raw = self.cache.get(key) if self.cache is not None else None
        cached = raw is not None
        if raw is None:
            try:
                raw = self.ask(prompt, response_a, response_b)
            except urllib.error.HTTPError as err:
                # A 4xx other than 429 will fail every request the same way: stop and say so.
                raise JudgeRequestError(
                    f"{self.url}: HTTP {err.code} {err.reason}, not retried (check the model name, "
                    f"the key in ${self.api_key_env} and the URL)"
                ) from None
            except JudgeRequestError as err:  # transient failures that outlasted the retries
                return Verdict(None, error=str(err))
            if self.cache is not None:
                self.cache.put(key, raw)
        choice = parse_verdict(raw)
        return Verdict(choice, raw=raw, error=None if choice else "unparseable verdict", cached=cached)

    def compare_many(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(lambda item: self.compare(*item), items))


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"
