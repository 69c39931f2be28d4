"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` server.

Requests use the standard library only (urllib) from a bounded thread pool. A request that fails with a
5xx status, 429 (rate limited), a timeout or a lost connection is retried with exponential backoff
(``backoff_s``, then twice that, ...), or after the wait the server's ``Retry-After`` asks for when that is
longer (seconds or an HTTP-date, at most :data:`MAX_RETRY_AFTER_S`; a server asking for more fails the
request at once); any other 4xx is a configuration problem and is not retried. ``timeout_s`` bounds each
attempt as a whole (connecting, the headers and the body together), not each read, so a server that
trickles its answer cannot hold a request longer. The
API key is read from the environment variable the config names, sent only in the Authorization header,
and never logged, cached or shown in ``repr``. Redirects are refused (:class:`JudgeRedirectError`), so the
key is never sent to an address other than ``base_url``.

A request that still fails after its retries, or an answer that is not a chat completion, is an invalid
verdict; once more than ``max_invalid_fraction`` of a batch is invalid the remaining comparisons are not
asked (the evaluation fails anyway, see :func:`alignkit.eval.judges.base.check_verdicts`).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignkit.cache import cache_dir as default_cache_dir
from alignkit.eval.judges.base import SKIPPED, Judge, Verdict
from alignkit.eval.judges.cache import VerdictCache, verdict_key
from alignkit.eval.judges.http_deadline import (
    MAX_RETRY_AFTER_S,
    RequestDeadline,
    deadline_handlers,
    retry_after_s,
)
from alignkit.eval.judges.keys import check_api_key_env, unset_api_key
from alignkit.eval.judges.prompt import PROMPT_VERSION, judge_messages, parse_verdict
from alignkit.eval.judges.registry import register_judge
from alignkit.jsonio import to_json
from alignkit.progress import ProgressFn

__all__ = ["MAX_ANSWER_BYTES", "MAX_RETRY_AFTER_S", "JudgeRedirectError", "JudgeRequestError", "OpenAIJudge", "build_openai_judge"]

# A chat completion holding a short verdict is a few kB; a longer answer is not read past this.
MAX_ANSWER_BYTES = 1 << 20


class JudgeRequestError(RuntimeError, ValueError):
    """A judge request failed for good (after retries, or with a status that retrying cannot fix).

    Also a ValueError: like other settings that cannot work, the CLI shows it as a message (exit 2).
    """


class JudgeRedirectError(JudgeRequestError):
    """The server answered with a redirect; the judge follows none, so the key never leaves ``base_url``."""


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (what credentials are scoped to)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number
        return "an invalid address"
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects and copies every header, the Authorization one included: refuse them all.

    (A POST redirected by 301/302/303 would also arrive as a bodiless GET: no redirect can be useful here.)
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - the stdlib's hook
        fp.close()
        where = urllib.parse.urljoin(req.full_url, newurl)
        same = "the same server" if _origin(where) == _origin(req.full_url) else f"another address ({_origin(where)})"
        raise JudgeRedirectError(
            f"{req.full_url}: the server redirected (HTTP {code}) to {same}; the judge follows no redirect, so "
            "that the API key is never sent anywhere but eval.judge.base_url: set base_url to the address that "
            "answers"
        )


_OPENER = urllib.request.build_opener(_RefuseRedirects(), *deadline_handlers())


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
        timeout_s: seconds one attempt may take as a whole (connect, headers and body).
        max_retries: retries after a retryable failure.
        backoff_s: first retry delay in seconds; doubles every retry.
        max_tokens: answer length limit.
        temperature: judge sampling temperature.
        cache_path: JSON-lines verdict cache; None disables caching.
        max_invalid_fraction: in :meth:`compare_many`, once more than this share of the batch is invalid,
            the comparisons not yet started are not asked (their verdicts are invalid, with an error text
            starting "not asked:"); None asks them all.

    Raises:
        ValueError: ``api_key_env`` looks like a key rather than a variable name (the value is not shown).
        JudgeRequestError: the variable ``api_key_env`` names is not set.

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
        max_invalid_fraction: float | None = None,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        if max_invalid_fraction is not None and not 0 <= max_invalid_fraction <= 1:
            raise ValueError(f"max_invalid_fraction must lie in [0, 1], got {max_invalid_fraction}")
        check_api_key_env(api_key_env)
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
        self.max_invalid_fraction = max_invalid_fraction
        self.requests_sent = 0
        self._count_lock = threading.Lock()
        # Fail now, naming the variable (never its value), rather than on the first of many requests.
        if (why := unset_api_key(api_key_env)) is not None:
            raise JudgeRequestError(why)

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
        with RequestDeadline(self.timeout_s) as deadline:
            request.deadline = deadline  # type: ignore[attr-defined]  # read by the deadline handlers
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    data = response.read(MAX_ANSWER_BYTES + 1)
            except urllib.error.HTTPError:
                raise  # a whole answer with an error status
            except Exception as err:
                if deadline.expired:
                    raise TimeoutError(f"timed out: no complete answer within timeout_s={self.timeout_s:g} s") from err
                raise
            if deadline.expired:  # the socket was shut down mid-body: what was read is cut short
                raise TimeoutError(f"timed out: no complete answer within timeout_s={self.timeout_s:g} s")
        if len(data) > MAX_ANSWER_BYTES:
            raise JudgeRequestError(f"{self.url}: answer is not a chat completion (over {MAX_ANSWER_BYTES} bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JudgeRequestError(f"{self.url}: answer is not a chat completion (not UTF-8 text)") from None
        return json.loads(text)  # not JSON: retried, like an answer cut short

    def ask(self, prompt: str, response_a: str, response_b: str) -> str:
        """The judge's answer text for one ordered pair (retrying transient failures).

        Raises:
            JudgeRequestError: still failing after ``max_retries`` retries, or the answer is not a chat
                completion.
            JudgeRedirectError: the server redirected the request.
            urllib.error.HTTPError: a status that retrying cannot fix (a 4xx other than 429).
        """
        body = to_json({
            "model": self.model,
            "messages": judge_messages(prompt, response_a, response_b),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }, indent=None).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                answer = self._post(body)
            except Exception as err:  # noqa: BLE001 - sorted into retryable or not just below
                if not _retryable(err):
                    raise
                if attempt == self.max_retries:
                    raise JudgeRequestError(
                        f"{self.url}: failed after {self.max_retries + 1} attempt{'s' if self.max_retries else ''}: "
                        f"{_describe(err)}"
                    ) from None
                time.sleep(self._retry_wait(err, attempt))
                continue
            return _content(self.url, answer)
        raise AssertionError("unreachable")

    def _retry_wait(self, err: BaseException, attempt: int) -> float:
        """Seconds before the next attempt: the backoff, or the server's ``Retry-After`` when longer."""
        backoff = self.backoff_s * 2**attempt
        if not isinstance(err, urllib.error.HTTPError) or err.code not in (429, 503):
            return backoff
        asked = retry_after_s(err.headers.get("Retry-After") if err.headers is not None else None)
        if asked is None:
            return backoff
        if asked > MAX_RETRY_AFTER_S:
            raise JudgeRequestError(
                f"{self.url}: HTTP {err.code}, the server asks to retry after {asked:g} s, longer than the judge "
                f"waits ({MAX_RETRY_AFTER_S:g} s)"
            )
        return max(backoff, asked)

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        key = self._key(prompt, response_a, response_b)
        raw = self.cache.get(key) if self.cache is not None else None
        cached = raw is not None
        if raw is None:
            try:
                raw = self.ask(prompt, response_a, response_b)
            except JudgeRedirectError:
                raise  # a setting to fix, the same for every request: stop
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

    def compare_many(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> list[Verdict]:
        """Verdicts for (prompt, A, B) triples, ``max_concurrency`` requests at a time; ``progress(done,
        total)`` as answers come back.

        With ``max_invalid_fraction`` set, the comparisons not started once the batch has more invalid
        verdicts than that share allows are not asked: the evaluation has failed already.
        """
        if not items:
            return []
        limit = None if self.max_invalid_fraction is None else self.max_invalid_fraction * len(items)
        state: dict[str, Any] = {"invalid": 0, "first_error": None, "done": 0}
        lock = threading.Lock()

        def one(item: tuple[str, str, str]) -> Verdict:
            with lock:
                if limit is not None and state["invalid"] > limit:
                    return Verdict(None, error=f"{SKIPPED} {state['invalid']} verdicts of {len(items)} were invalid "
                                              f"already (first: {state['first_error']})")
            verdict = self.compare(*item)
            with lock:
                if not verdict.valid:
                    state["invalid"] += 1
                    state["first_error"] = state["first_error"] or verdict.error
                state["done"] += 1
                if progress is not None:
                    progress(state["done"], len(items))
            return verdict

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(one, items))


def _content(url: str, answer: Any) -> str:
    """The message text of a chat-completions answer; JudgeRequestError when it is not one."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = 0  # not None, not a string: refused below
    if content is None:
        return ""
    if not isinstance(content, str):
        shown = to_json(answer, indent=None)[:200] if isinstance(answer, (dict, list)) else repr(answer)[:200]
        raise JudgeRequestError(f"{url}: answer is not a chat completion (no choices[0].message.content "
                                f"string): {shown}")
    return content


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"


@register_judge("openai")
def build_openai_judge(cfg: Any, *, cache_dir: str | Path | None = None, **_: Any) -> OpenAIJudge:
    """An HTTP judge from an ``eval.judge`` section; verdicts cached under ``cache_dir`` when ``cfg.cache``."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("judge_verdicts")
    return OpenAIJudge(
        cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
        max_tokens=cfg.max_tokens, temperature=cfg.temperature,
        cache_path=folder / "verdicts.jsonl" if cfg.cache else None,
        max_invalid_fraction=cfg.max_invalid_fraction,
    )
