"""The Hub check that lets offline runs stop at once instead of after a minute of retries."""

from __future__ import annotations

import socket

import pytest

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


def test_switching_off_an_unreachable_hub_keeps_the_real_reason(monkeypatch):
    """After alignkit itself sets HF_HUB_OFFLINE (the Hub did not answer), the reason given is still the
    unreachable Hub, not the variable alignkit set; a user's own HF_HUB_OFFLINE is still named as such."""
    import huggingface_hub.constants

    from alignkit import hub
    from alignkit.models.config import ModelConfig
    from alignkit.models.load import ModelLoadError, load_causal_lm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub, "_switched_off_because", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    hub._probe.cache_clear()
    try:
        assert "unreachable" in hub.go_offline_if_unreachable()
        assert "unreachable" in hub.hub_unavailable_reason()
        with pytest.raises(ModelLoadError) as err:
            load_causal_lm(ModelConfig(name_or_path="no-such-org/no-such-model"), "cpu")
        message = str(err.value)
        assert "unreachable" in message and "HF_HUB_OFFLINE" not in message
        assert "model.name_or_path" in message and "local folder" in message
    finally:
        hub._probe.cache_clear()
    monkeypatch.setattr(hub, "_switched_off_because", None)
    assert "HF_HUB_OFFLINE" in hub.hub_unavailable_reason()  # set, and not by alignkit: the user's switch
