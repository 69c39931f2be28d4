"""The recipe schema walked by path: where a pydantic error really is, and what a section's kind allows."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from alignkit.recipe.source import Location

__all__ = ["clean_loc", "fields_of_kind"]


def _members(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, through Annotated, Optional and unions."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _models(annotations: list[Any]) -> list[type[BaseModel]]:
    return [m for a in annotations for m in _members(a) if isinstance(m, type) and issubclass(m, BaseModel)]


def _items(annotations: list[Any]) -> list[Any]:
    """The element annotations of the list types among ``annotations``."""
    out = []
    for a in annotations:
        for m in _members(a):
            if typing.get_origin(m) in (list, tuple) and typing.get_args(m):
                out.append(typing.get_args(m)[0])
    return out


def _kinds(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("kind")
    if field is None:
        return ()
    return tuple(a for m in _members(field.annotation) for a in typing.get_args(m))


def clean_loc(loc: Sequence[Any], schema: type[BaseModel]) -> Location:
    """A pydantic error location as a recipe path: union tags and pydantic's internal steps removed."""
    out: list[str | int] = []
    current: list[Any] = [schema]
    for part in loc:
        if isinstance(part, int):
            out.append(part)
            current = _items(current)
            continue
        models = _models(current)
        fields = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if fields:
            out.append(part)
            current = fields
        elif [m for m in models if part in _kinds(m)]:
            current = [m for m in models if part in _kinds(m)]  # the tag pydantic adds for a union member
        elif "[" in part or part in ("tagged-union",) or part.startswith("function-"):
            continue
        elif part in {getattr(m, "__name__", None) for a in current for m in _members(a)}:
            current = [m for a in current for m in _members(a) if getattr(m, "__name__", None) == part]
        else:
            out.append(part)
            current = []
    return tuple(out)


def fields_of_kind(schema: type[BaseModel], parts: Sequence[str | int], kind: Any) -> set[str] | None:
    """The fields of the section at ``parts`` once its ``kind`` is ``kind`` (None: not a kinded section)."""
    current: list[Any] = [schema]
    for part in parts:
        if isinstance(part, int):
            current = _items(current)
        else:
            current = [m.model_fields[part].annotation for m in _models(current) if part in m.model_fields]
    matching = [m for m in _models(current) if kind in _kinds(m)]
    return set(matching[0].model_fields) if matching else None
