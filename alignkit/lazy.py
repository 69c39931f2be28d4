"""A module imported on first use, so that code which only names torch costs nothing until it computes.

The loss modules, for instance, are imported to list and validate objectives (``alignkit losses``,
``alignkit validate``), which never touch a tensor; their functions use torch only when called. Such a
module binds ``torch = lazy_module("torch")`` at run time and the real module under ``TYPE_CHECKING``, so the
type checker sees torch and the interpreter imports it at the first attribute read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "lazy_exports", "lazy_module"]


class LazyModule:
    """Stands for the module ``name`` and imports it on the first attribute read.

    Each attribute read is copied onto this object, so later reads are plain attribute lookups.
    """

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def _module(self) -> ModuleType:
        return importlib.import_module(self.__dict__["_lazy_name"])

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._module(), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_name']!r}>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports ``name`` when an attribute of it is first read."""
    return LazyModule(name)


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]],
                 on_first_use: Sequence[str] = ()) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that imports each public name's module when it is first read.

    A package whose modules need torch re-exports their names this way, so importing one light module of it
    (a config schema) does not import the rest. The names are also imported under ``TYPE_CHECKING`` in the
    package's ``__init__``, for the type checker; ``tests/test_lazy_exports.py`` checks the two agree.

    Args:
        package: the package's ``__name__``.
        exports: submodule name (relative to the package) -> the public names it provides.
        on_first_use: submodules imported before the first name is returned (built-ins that register
            themselves in a registry the package exports).
    """
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}
    pending = list(on_first_use)

    def __getattr__(name: str) -> Any:  # noqa: N807  (the module-level hook's own name)
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        while pending:
            importlib.import_module(f"{package}.{pending.pop(0)}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
