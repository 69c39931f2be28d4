"""HTTP requests bounded as a whole, and the server's ``Retry-After`` read as a wait.

A socket timeout bounds each read, so a server that sends one byte a second keeps a request alive
forever. Here a watchdog timer shuts the request's socket down once its deadline passes: connecting,
sending, the status line, the headers and the body together take at most ``timeout_s``.
"""

from __future__ import annotations

import email.utils
import http.client
import math
import socket
import threading
import urllib.request
from datetime import datetime, timezone
from typing import Any

__all__ = ["MAX_RETRY_AFTER_S", "RequestDeadline", "deadline_handlers", "retry_after_s"]

# The longest wait a server's Retry-After can ask for; a longer one fails the request instead.
MAX_RETRY_AFTER_S = 60.0


class RequestDeadline:
    """A watchdog that shuts down the socket of one request once ``timeout_s`` seconds have passed.

    Use as a context manager around opening and reading the response; ``expired`` says whether it fired.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def attach(self, sock: socket.socket) -> None:
        """Watch ``sock`` (shut it down at once when the deadline has passed already)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def __enter__(self) -> RequestDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv in the request's thread
    except OSError:
        pass  # closed already


def _watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, deadline: RequestDeadline, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline = deadline

        def connect(self) -> None:
            super().connect()
            self._deadline.attach(self.sock)

    return Watched


_WatchedHTTP = _watched(http.client.HTTPConnection)
_WatchedHTTPS = _watched(http.client.HTTPSConnection)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(_WatchedHTTP, req, deadline=req.deadline)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        return self.do_open(_WatchedHTTPS, req, deadline=req.deadline)


def deadline_handlers() -> list[urllib.request.BaseHandler]:
    """urllib handlers for http and https whose connections obey the request's ``deadline`` attribute."""
    return [_DeadlineHTTPHandler(), _DeadlineHTTPSHandler()]


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (delta-seconds or an HTTP-date).

    Args:
        value: the header's text, or None when the answer had none.
        now: the current Unix time (for tests); the clock when None.

    Returns:
        Seconds to wait (0 for a date in the past), or None when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text) if len(text) < 12 else math.inf  # an absurd number of seconds: longer than any cap
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(when.timestamp() - current, 0.0)
