"""The Hub check that lets offline runs stop at once instead of after a minute of retries."""

from __future__ import annotations

import socket

from alignkit.hub import hub_unavailable_reason


def test_offline_switch_is_reported(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in hub_unavailable_reason()


def test_unreachable_endpoint_is_reported_quickly(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert "unreachable" in hub_unavailable_reason(timeout=1.0)


def test_reachable_endpoint_is_usable(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unavailable_reason(timeout=1.0) is None
