"""The open connections of `alignkit serve`: at most ``max_connections``, and none idle past its deadline.

A connection waiting for its next request (a new one, or a keep-alive one between requests) has
``header_timeout_s`` to deliver the whole request line and headers, however slowly it trickles them; a
reaper thread shuts it down after that. When every place is taken, a new connection takes the place of the
oldest one that is only waiting (it had its chance), so idle or slow clients cannot lock out a client with
a request (``/health`` included); only when every connection is busy with a request is the new one
answered 503. The server's threads therefore stay near ``max_connections``, however many sockets a client
opens.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["ConnectionTable", "refuse_busy"]

_BUSY = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"


@dataclass
class _Entry:
    deadline: float | None  # monotonic time by which the headers must be in; None while a request is served


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns: its thread ends
    except OSError:
        pass  # closed already


class ConnectionTable:
    """The server's open connections and their header deadlines.

    Args:
        max_connections: connections open at once.
        header_timeout_s: seconds a waiting connection has to send a request's line and headers.
    """

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._entries: dict[socket.socket, _Entry] = {}  # in the order they were accepted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="serve connection reaper", daemon=True)
        self._reaper.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def admit(self, sock: socket.socket) -> bool:
        """Register a new connection, making room by closing the oldest waiting one; False when all are busy
        (the caller answers 503 and closes it)."""
        with self._lock:
            if len(self._entries) >= self.max_connections:
                oldest = next((s for s, e in self._entries.items() if e.deadline is not None), None)
                if oldest is None:
                    return False
                del self._entries[oldest]
                _shutdown(oldest)
            self._entries[sock] = _Entry(time.monotonic() + self.header_timeout_s)
            return True

    def waiting(self, sock: socket.socket) -> None:
        """``sock`` waits for its next request: the header deadline starts now."""
        with self._lock:
            if sock in self._entries:
                self._entries[sock].deadline = time.monotonic() + self.header_timeout_s

    def busy(self, sock: socket.socket) -> None:
        """``sock`` has sent a request's headers: no deadline while it is served (socket timeouts apply)."""
        with self._lock:
            if sock in self._entries:
                self._entries[sock].deadline = None

    def forget(self, sock: socket.socket) -> None:
        """``sock`` is closed."""
        with self._lock:
            self._entries.pop(sock, None)

    def close(self) -> None:
        """Stop the reaper."""
        self._stop.set()

    def _reap(self) -> None:
        period = min(0.25, self.header_timeout_s / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                late = [s for s, e in self._entries.items() if e.deadline is not None and e.deadline < now]
                for sock in late:
                    del self._entries[sock]
                    _shutdown(sock)


def refuse_busy(sock: socket.socket, open_connections: int) -> None:
    """Answer 503 on a connection that gets no place, without reading it, and close it."""
    body = (b'{"error": {"message": "server busy: ' + str(open_connections).encode()
            + b' connections are being answered; retry later", "type": "server_overloaded", "code": 503}}')
    try:
        sock.settimeout(1.0)
        sock.sendall(_BUSY.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    except OSError:
        pass  # the client left already
