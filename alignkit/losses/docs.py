"""Render the loss registry as Markdown (docs/losses.md) and describe a loss's parameters.

``scripts/gen_docs.py`` writes the file; a test fails when the checked-in copy drifts.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from alignkit.losses.base import LossSpec, list_losses
from alignkit.schema_docs import ParameterDoc, field_docs, markdown_cell

__all__ = ["ParameterDoc", "builtin_losses", "docstring_body", "loss_parameters", "reference_cell",
           "render_losses_markdown"]

REGENERATE = "python scripts/gen_docs.py"
_BUILTIN_PREFIX = "alignkit.losses."


def loss_parameters(spec: LossSpec) -> list[ParameterDoc]:
    """The parameters of a registered loss, from its config class."""
    return field_docs(spec.config)


def builtin_losses() -> list[LossSpec]:
    """The losses that ship with alignkit (plugins excluded), sorted by name."""
    return [s for s in list_losses() if s.fn.__module__.startswith(_BUILTIN_PREFIX)]


def docstring_body(fn: Callable[..., Any]) -> str:
    """A function's docstring between its summary line and ``Args:``, with ``Formula::`` blocks fenced."""
    doc = inspect.getdoc(fn) or ""
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


def reference_cell(spec: LossSpec) -> str:
    """"yes" / "no", marked with "*" where the loss's parameters decide (the value is the defaults')."""
    return ("yes" if spec.needs_reference else "no") + ("*" if spec.reference_rule is not None else "")


def _reference_line(spec: LossSpec) -> str:
    answer = "yes" if spec.needs_reference else "no"
    if spec.reference_rule is None:
        return answer
    return f"{answer} with the default parameters; its parameters decide (see below)"


def _render_one(spec: LossSpec) -> list[str]:
    out = [
        f"## {spec.name}",
        "",
        spec.description,
        "",
        f"- needs reference model: {_reference_line(spec)}",
        f"- model inputs: `{spec.inputs}`",
        f"- config class: `{spec.config.__module__}.{spec.config.__qualname__}`",
        "",
    ]
    params = loss_parameters(spec)
    if params:
        out += ["| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
        out += [
            f"| `{p.name}` | {markdown_cell(p.type)} | `{p.default}` | {markdown_cell(p.bounds)} | {markdown_cell(p.description)} |"
            for p in params
        ]
    else:
        out.append("No parameters.")
    body = docstring_body(spec.fn)
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
        f"| [`{s.name}`](#{s.name}) | {reference_cell(s)} | "
        f"`{s.inputs}` | {markdown_cell(s.description)} |"
        for s in specs
    ]
    if any(s.reference_rule is not None for s in specs):
        out += ["", "\\* with the default parameters; the loss's parameters decide (see its section)."]
    out.append("")
    for s in specs:
        out += _render_one(s)
    return "\n".join(out).rstrip("\n") + "\n"
