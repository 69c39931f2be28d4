"""The base of every recipe section: unknown keys are errors and every number must be finite.

A YAML file (or a ``train.lr=.inf`` override) can spell infinities and NaNs; no setting of alignkit
means anything with them, so they are refused where they are read, with the field's path, instead of
surfacing as a non-finite loss many steps later.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["SEED_MAX", "StrictConfig"]

# Seeds go to numpy, which takes 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1


class StrictConfig(BaseModel):
    """Strict: unknown fields are errors, floats must be finite (no inf, no nan)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())
