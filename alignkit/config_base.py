"""The base of every recipe section: unknown keys are errors and every number must be finite.

A YAML file (or a ``train.lr=.inf`` override) can spell infinities and NaNs; no setting of alignkit
means anything with them, so they are refused where they are read, with the field's path, instead of
surfacing as a non-finite loss many steps later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
)

__all__ = ["SEED_MAX", "FieldError", "StrictConfig", "dump_plugin_kind", "validate_plugin_kind"]

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


# A section chosen by its ``kind`` (``data.source``, ``prompts``) is a union of the built-in configs; a plugin
# that registers a kind with its own config class makes that kind valid there too. The field keeps the built-in
# union as its type (so the generated reference lists those), and these two wrap its validation and dumping.


class KindRegistry(Protocol):
    """What :func:`validate_plugin_kind` reads of a registry (an ``alignkit.registry.Registry``)."""

    kind: str

    def __contains__(self, name: object) -> bool: ...

    def names(self) -> list[str]: ...

    def config(self, name: str) -> Any: ...


def validate_plugin_kind(value: Any, handler: ValidatorFunctionWrapHandler, registry: Callable[[], KindRegistry],
                         builtin: tuple[type[BaseModel], ...]) -> Any:
    """Validate a section by the config its ``kind`` was registered with in ``registry()`` (a plugin's kind), or
    by the built-in union (``handler``) for a built-in or unknown kind.

    Raises:
        ValueError: a kind registered without a config class (a recipe cannot name it).
    """
    kind = value.get("kind") if isinstance(value, dict) else None
    builtin_kinds = [get_args(m.model_fields["kind"].annotation)[0] for m in builtin]  # kind: Literal["name"]
    if not isinstance(kind, str) or kind in builtin_kinds:
        return handler(value)
    entries = registry()
    if kind not in entries:
        plugins = [k for k in entries.names() if entries.config(k) is not None]
        raise ValueError(f"unknown {entries.kind} kind {kind!r}; built-in: {', '.join(builtin_kinds)}"
                         + (f"; from plugins: {', '.join(plugins)}" if plugins else "")
                         + " (a plugin adds one with its config class: register it with config=...)")
    config = entries.config(kind)
    if config is None:
        raise ValueError(f"{entries.kind} {kind!r} is registered without a config class, so a recipe cannot name it; "
                         f"register it with config=<a pydantic model with kind: Literal[{kind!r}]>")
    return config.model_validate(value)


def dump_plugin_kind(value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo,
                     builtin: tuple[type, ...]) -> Any:
    """A plugin's config dumps as itself (the union's serializer knows only the built-in members)."""
    if isinstance(value, BaseModel) and not isinstance(value, builtin):
        return value.model_dump(mode=info.mode)
    return handler(value)
