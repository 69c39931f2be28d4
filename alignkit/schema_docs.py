"""Describe the fields of a pydantic config in words: for generated reference pages (losses, recipes)."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["ParameterDoc", "field_docs", "markdown_cell"]


@dataclass(frozen=True)
class ParameterDoc:
    """One config field of a loss, in words.

    Attributes:
        name: the parameter name used in recipes.
        type: its type, e.g. ``float`` or ``float | None``.
        default: its default, as written in YAML (``required`` when there is none).
        bounds: constraints such as ``> 0, < 0.5`` (empty when unbounded).
        description: what it does.
    """

    name: str
    type: str
    default: str
    bounds: str
    description: str


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")


def _yaml_value(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _default(info: Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()
        return "(section defaults)" if isinstance(value, BaseModel) else _yaml_value(value)
    return _yaml_value(info.default)


def field_docs(model: type[BaseModel]) -> list[ParameterDoc]:
    """The fields of a pydantic model (a loss config, a recipe section), in words."""
    out = []
    for field, info in model.model_fields.items():
        name = info.alias or field  # a recipe spells a field by its alias (online.async)
        bounds = []
        for m in info.metadata:
            for cls, op, attr in ((Gt, ">", "gt"), (Ge, ">=", "ge"), (Lt, "<", "lt"), (Le, "<=", "le")):
                if isinstance(m, cls):
                    bounds.append(f"{op} {_yaml_value(getattr(m, attr))}")
        out.append(
            ParameterDoc(
                name=name,
                type=_type_name(info.annotation),
                default=_default(info),
                bounds=", ".join(bounds),
                description=info.description or "",
            )
        )
    return out


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|") if text else ""
