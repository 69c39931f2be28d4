"""Render the online part registries as Markdown (docs/online_parts.md).

``scripts/gen_docs.py`` writes the file; a test fails when the checked-in copy drifts.
"""

from __future__ import annotations

from collections.abc import Iterable

from alignkit.losses.docs import REGENERATE, docstring_body
from alignkit.online.parts.base import PartSpec, all_parts
from alignkit.schema_docs import field_docs, markdown_cell

__all__ = ["builtin_parts", "render_online_parts_markdown"]

_BUILTIN_PREFIX = "alignkit.online.parts."

_FIELDS = {
    "advantage estimator": "online.advantage",
    "policy loss": "online.policy_loss",
    "loss aggregation": "online.loss_aggregation",
    "KL estimator": "online.kl.estimator",
    "rollout correction": "online.rollout_correction",
}


def builtin_parts() -> dict[str, list[PartSpec]]:
    """The parts that ship with alignkit (plugins left out), by kind, each sorted by name."""
    return {kind: [s for s in specs if s.fn.__module__.startswith(_BUILTIN_PREFIX)]
            for kind, specs in all_parts().items()}


def _render_one(spec: PartSpec) -> list[str]:
    out = [f"### {spec.name}", "", spec.description, "",
           f"- function: `{spec.fn.__module__}.{spec.fn.__qualname__}`"]
    if spec.needs_values:
        out.append("- needs a value model (built and trained with the policy; `online.value`)")
    if spec.weight_bound is not None:
        pos, neg = spec.weight_bound(spec.config())
        out.append(f"- largest gradient weight per token, with the defaults: {pos:.4g} x |A| for A > 0, "
                   f"{neg:.4g} x |A| for A < 0")
    out.append("")
    params = field_docs(spec.config)
    if params:
        out += ["| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
        out += [f"| `{p.name}` | {markdown_cell(p.type)} | `{p.default}` | {markdown_cell(p.bounds)} | "
                f"{markdown_cell(p.description)} |" for p in params]
    else:
        out.append("No parameters.")
    body = docstring_body(spec.fn)
    return out + (["", body] if body else []) + [""]


def render_online_parts_markdown(parts: dict[str, Iterable[PartSpec]] | None = None) -> str:
    """docs/online_parts.md: per kind, a summary table and one section per part.

    Args:
        parts: the parts by kind; by default the built-in ones (the page must not depend on loaded plugins).
    """
    chosen = {kind: list(specs) for kind, specs in (builtin_parts() if parts is None else parts).items()}
    out = [
        "# Online objective parts",
        "",
        f"<!-- Generated from the online part registries by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "An online objective is built from registered parts, each a pure function of per-token tensors with "
        "its own settings; `online.algorithm` is a preset that names them (see [online.md](online.md)). Choose "
        "one in a recipe as `{name: <part>, <setting>: <value>}` or just `<part>`. Notation: pi the policy, "
        "pi_old the policy that sampled the rollout, rho = pi / pi_old per token, A the advantage, sg a "
        "stopped gradient, l_t a token's loss. A plugin registers its own with `register_advantage` or "
        "`register_policy_loss` (`alignkit.online.parts`; example: examples/my_online_parts.py).",
        "",
    ]
    for kind, specs in chosen.items():
        field = _FIELDS.get(kind, kind)
        out += [f"## {kind[0].upper() + kind[1:]}s (`{field}`)", "", "| part | description |", "|---|---|"]
        out += [f"| [`{s.name}`](#{s.name}) | {markdown_cell(s.description)} |" for s in specs]
        out.append("")
        for s in specs:
            out += _render_one(s)
    return "\n".join(out).rstrip("\n") + "\n"
