"""The base of every recipe section: unknown keys are errors and every number must be finite.

A YAML file (or a ``train.lr=.inf`` override) can spell infinities and NaNs; no setting of alignkit
means anything with them, so they are refused where they are read, with the field's path, instead of
surfacing as a non-finite loss many steps later.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["SEED_MAX", "FieldError", "StrictConfig"]

# Seeds go to numpy, which takes 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1


class FieldError(ValueError):
    """A model validator's error about a field below the model it validates.

    ``where`` is that field's path relative to the model (``("policy_loss", "clip_low")``): the recipe's error
    then names the field's own line, or the command-line override that set it, not the section's. The message
    alone (``str``) names the field from ``section`` down, for a model built in Python.

    Args:
        where: the field's path below the model.
        detail: what is wrong with it.
        section: the model's own path in a recipe (``"online"``).
    """

    def __init__(self, where: tuple[str | int, ...], detail: str, *, section: str) -> None:
        super().__init__(f"{'.'.join(map(str, (section, *where)))}: {detail}")
        self.where, self.detail = where, detail


class StrictConfig(BaseModel):
    """Strict: unknown fields are errors, floats must be finite (no inf, no nan)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())
