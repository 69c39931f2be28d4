"""alignkit: align language models from preference data.

The public names below are loaded on first use (they bring in torch), so ``alignkit --help`` and the
recipe checks that need no model stay quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignkit.losses import LossOutput, PreferenceStats, get_loss, list_losses, register_loss

__all__ = ["LossOutput", "PreferenceStats", "get_loss", "list_losses", "register_loss"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("alignkit.losses"), name)
    raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
