"""One small generic registry: register by name, get by name, list names.

Every extension point of alignkit (losses, data sources, rewards, judges) is a `Registry`. Registering the same
name twice is an error, so a plugin can never silently replace a built-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T")


class RegistryError(KeyError):
    """A name that is unknown, or registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> entry mapping with helpful errors.

    Args:
        kind: what the entries are ("loss", "data source"), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._configs: dict[str, Any] = {}

    def add(self, name: str, entry: T, *, config: Any = None) -> T:
        """Register ``entry`` under ``name``; ``config``, the class a recipe's section of this kind validates
        against (a kind a plugin adds to a section whose built-in configs are a fixed union)."""
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        if config is not None:
            self._configs[name] = config
        return entry

    def config(self, name: str) -> Any:
        """The config class registered with ``name``, or None."""
        return self._configs.get(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def remove(self, name: str) -> None:
        """Forget an entry (tests and interactive sessions that re-register)."""
        self._entries.pop(name, None)
        self._configs.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
