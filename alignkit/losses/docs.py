"""Render the loss registry as Markdown (docs/losses.md) and describe a loss's parameters.

``scripts/gen_loss_docs.py`` writes the file; a test fails when the checked-in copy drifts.
"""

from __future__ import annotations

import inspect
import textwrap
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic_core import PydanticUndefined

from alignkit.losses.base import LossSpec, list_losses

__all__ = ["ParameterDoc", "builtin_losses", "loss_parameters", "render_losses_markdown"]

REGENERATE = "python scripts/gen_loss_docs.py"
_BUILTIN_PREFIX = "alignkit.losses."


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


def loss_parameters(spec: LossSpec) -> list[ParameterDoc]:
    """The parameters of a registered loss, from its config class."""
    out = []
    for name, info in spec.config.model_fields.items():
        bounds = []
        for m in info.metadata:
            for cls, op, attr in ((Gt, ">", "gt"), (Ge, ">=", "ge"), (Lt, "<", "lt"), (Le, "<=", "le")):
                if isinstance(m, cls):
                    bounds.append(f"{op} {_yaml_value(getattr(m, attr))}")
        out.append(
            ParameterDoc(
                name=name,
                type=_type_name(info.annotation),
                default=_yaml_value(info.default),
                bounds=", ".join(bounds),
                description=info.description or "",
            )
        )
    return out


def builtin_losses() -> list[LossSpec]:
    """The losses that ship with alignkit (plugins excluded), sorted by name."""
    return [s for s in list_losses() if s.fn.__module__.startswith(_BUILTIN_PREFIX)]


def _docstring_body(spec: LossSpec) -> str:
    """The docstring between its summary line and ``Args:``, with ``Formula::`` blocks fenced."""
    doc = inspect.getdoc(spec.fn) or ""
    lines = doc.splitlines()[1:]
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() in ("Args:", "Returns:", "Raises:"):
            break
        if line.rstrip().endswith("::"):
            body.append(line.rstrip()[:-1])
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            body += ["", "```text", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        body.append(line)
        i += 1
    return "\n".join(body).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def _render_one(spec: LossSpec) -> list[str]:
    out = [
        f"## {spec.name}",
        "",
        spec.description,
        "",
        f"- needs reference model: {'yes' if spec.needs_reference else 'no'}",
        f"- model inputs: `{spec.inputs}`",
        f"- config class: `{spec.config.__module__}.{spec.config.__qualname__}`",
        "",
    ]
    params = loss_parameters(spec)
    if params:
        out += ["| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
        out += [
            f"| `{p.name}` | {_cell(p.type)} | `{p.default}` | {_cell(p.bounds)} | {_cell(p.description)} |"
            for p in params
        ]
    else:
        out.append("No parameters.")
    body = _docstring_body(spec)
    if body:
        out += ["", body]
    return out + [""]


def render_losses_markdown(specs: Iterable[LossSpec] | None = None) -> str:
    """docs/losses.md: a summary table and one section per loss.

    Args:
        specs: the losses to document; by default the built-in ones (plugins are left out so that
            the checked-in file does not depend on what was loaded).

    Returns:
        The Markdown text, ending in a newline.
    """
    specs = list(builtin_losses() if specs is None else specs)
    out = [
        "# Losses",
        "",
        f"<!-- Generated from the loss registry by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every loss is a pure function of per-sequence statistics, registered by name. Use one in a "
        "recipe as `loss: {name: <name>, <parameter>: <value>}`, or a weighted sum as a list "
        "(`loss: [{name: dpo}, {name: sft, weight: 0.1}]`). Notation: yw / yl are the chosen / "
        "rejected responses, log π(y) the policy's log-prob summed over response tokens, π_ref the "
        "reference model, |y| the response length, σ the logistic sigmoid. See "
        "[custom_loss.md](custom_loss.md) to add your own.",
        "",
        "| loss | reference | inputs | description |",
        "|---|---|---|---|",
    ]
    out += [
        f"| [`{s.name}`](#{s.name}) | {'yes' if s.needs_reference else 'no'} | "
        f"`{s.inputs}` | {_cell(s.description)} |"
        for s in specs
    ]
    out.append("")
    for s in specs:
        out += _render_one(s)
    return "\n".join(out).rstrip("\n") + "\n"
