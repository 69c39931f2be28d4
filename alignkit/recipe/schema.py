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


def _model_of_kind(schema: type[BaseModel], parts: Sequence[str | int], kind: Any) -> type[BaseModel] | None:
    current: list[Any] = [schema]
    for part in parts:
        if isinstance(part, int):
            current = _items(current)
        else:
            current = [m.model_fields[part].annotation for m in _models(current) if part in m.model_fields]
    matching = [m for m in _models(current) if kind in _kinds(m)]
    return matching[0] if matching else None


def fields_of_kind(schema: type[BaseModel], parts: Sequence[str | int], kind: Any,
                   old_kind: Any = None) -> set[str] | None:
    """The fields of the section at ``parts`` once its ``kind`` is ``kind`` (None: not a kinded section).

    With ``old_kind``, only the fields the two kinds share as the same setting (same type and meaning, such
    as the checks every judge has): a field that only shares its name (a local judge's ``model`` and a
    reward judge's ``model``) is not carried over from one kind to the other.
    """
    new = _model_of_kind(schema, parts, kind)
    if new is None:
        return None
    old = _model_of_kind(schema, parts, old_kind) if old_kind is not None else None
    if old is None:
        return set(new.model_fields)
    return {name for name, field in new.model_fields.items() if name in old.model_fields
            and (old.model_fields[name].annotation, old.model_fields[name].description)
            == (field.annotation, field.description)}
