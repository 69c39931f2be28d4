"""Refuse an API key pasted where the NAME of the environment variable holding it belongs.

``eval.judge.api_key_env`` names a variable (``OPENAI_API_KEY``); the key itself must never be in a
recipe, since the recipe is copied into every run folder and shown in logs. A value that looks like a key
is refused, and the error never repeats the value.

A run checks that the variable is set before it loads any model (:func:`check_judge_environment`), rather
than failing when the judge is built after all training is done.
"""

from __future__ import annotations

import os
import re

__all__ = ["MissingApiKeyError", "check_api_key_env", "check_judge_environment", "unset_api_key"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How well-known API keys begin (OpenAI and Anthropic sk-, Hugging Face hf_, GitHub ghp_/github_pat_,
# Google AIza, Slack xox, Groq gsk_, Replicate r8_); case-sensitive, as the providers issue them.
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghs_", "github_pat_", "AIza", "xox", "gsk_", "r8_")
_MIN_RANDOM_RUN = 20


def _looks_random(name: str) -> bool:
    """Whether ``name`` has a long stretch of letters mixed with digits, or of mixed-case letters only.

    Variable names are words joined by underscores (``AZURE_OPENAI_API_KEY_2``); keys are long random
    runs of letters and digits. A run of 20+ characters holding both letters and digits, or of 32+
    letters in both cases, is taken for a key.
    """
    for run in re.findall(r"[A-Za-z0-9]+", name):
        letters = any(c.isalpha() for c in run)
        digits = any(c.isdigit() for c in run)
        if len(run) >= _MIN_RANDOM_RUN and letters and digits:
            return True
        if len(run) >= 32 and any(c.islower() for c in run) and any(c.isupper() for c in run):
            return True
    return False


def check_api_key_env(name: str | None) -> str | None:
    """``name`` when it can be an environment variable's name (None passes: no key is sent).

    Raises:
        ValueError: ``name`` starts like an API key, holds characters no variable name has, or is a long
            random-looking string. The message never contains ``name``.
    """
    if name is None:
        return None
    if name.startswith(_KEY_PREFIXES):
        why = "it starts like an API key"
    elif not _ENV_NAME.fullmatch(name):
        why = "it is not a valid environment-variable name (letters, digits and _, not starting with a digit)"
    elif _looks_random(name):
        why = "it is a long random-looking string, like an API key"
    else:
        return name
    raise ValueError(
        f"api_key_env must be the NAME of the environment variable holding the API key (e.g. OPENAI_API_KEY), "
        f"not the key: the value given ({len(name)} characters, not shown) is refused because {why}. Export the "
        "key (export OPENAI_API_KEY=...) and set api_key_env: OPENAI_API_KEY; if a real key was written in a "
        "recipe, consider it exposed and rotate it"
    )


class MissingApiKeyError(ValueError):
    """The environment variable ``eval.judge.api_key_env`` names is not set (a setting that cannot work)."""


def unset_api_key(name: str | None) -> str | None:
    """Why no API key can be read from the environment variable ``name``, or None when one can.

    The message names the field and the variable, never a value. None ``name`` (no key is sent) passes.
    """
    if name is None or os.environ.get(name):
        return None
    return (f"eval.judge.api_key_env names the environment variable {name!r}, which is not set (or is empty); "
            "export it, or set api_key_env: null for a server that needs no key")


def check_judge_environment(judge: object | None) -> None:
    """Check, before a run loads any model, that the ``eval.judge`` section ``judge`` can read its API key.

    Args:
        judge: an ``eval.judge`` section (any kind: only one with an ``api_key_env`` setting is checked), or
            None for a run without evaluation.

    Raises:
        MissingApiKeyError: the variable ``judge.api_key_env`` names is not set; the message names the field
            and the variable, never a value.
    """
    why = unset_api_key(getattr(judge, "api_key_env", None))
    if why is not None:
        raise MissingApiKeyError(why)
