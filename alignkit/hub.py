"""Is the Hugging Face Hub usable? Answered in at most a few seconds, so offline runs stop at once.

Without this, a Hub id on a machine with no network costs about a minute of retries inside
huggingface_hub before any error; a direct TCP probe answers in milliseconds to seconds.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

__all__ = ["go_offline_if_unreachable", "hub_unavailable_reason"]

_TRUE = ("1", "true", "yes", "on")

# Why this process switched the Hub off itself (go_offline_if_unreachable): the switch is then not the
# reason to report, the failed probe is.
_switched_off_because: str | None = None


@lru_cache(maxsize=1)
def _probe(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"the Hub ({host}) is unreachable: {err}"


def hub_unavailable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be used (HF_HUB_OFFLINE set by the user, or no connection), or None when it can.

    When :func:`go_offline_if_unreachable` set ``HF_HUB_OFFLINE`` in this process, the reason is the
    unreachable Hub it found, not the variable it set.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return _switched_off_because or "the Hugging Face Hub is switched off (HF_HUB_OFFLINE=1)"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return _probe(endpoint.hostname or "huggingface.co", port, timeout)


def go_offline_if_unreachable() -> str | None:
    """Switch huggingface_hub to offline mode for this process when the Hub cannot be reached.

    Loading from the local cache then takes milliseconds: even ``local_files_only=True`` otherwise makes
    HEAD requests (with retries) in transformers 5.x. Returns the reason, or None when the Hub answers.
    """
    global _switched_off_because
    reason = hub_unavailable_reason()
    if reason is not None:
        import huggingface_hub.constants

        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _TRUE:
            _switched_off_because = reason
        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import time; set it for this process
    return reason
