"""docs/online_parts.md is generated from the online part registries; fail when the checked-in file drifts."""

from __future__ import annotations

from pathlib import Path

from alignkit.losses.docs import REGENERATE
from alignkit.online.parts import POLICY_LOSSES
from alignkit.online.parts.docs import builtin_parts, render_online_parts_markdown
from alignkit.plugins import load_plugin

DOCS = Path(__file__).resolve().parents[2] / "docs" / "online_parts.md"
PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "my_online_parts.py"


def test_online_parts_md_matches_the_registries() -> None:
    actual = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert actual == render_online_parts_markdown(), f"docs/online_parts.md is out of date; run: {REGENERATE}"


def test_every_builtin_part_has_a_section_with_its_formula_and_paper() -> None:
    text = render_online_parts_markdown()
    for specs in builtin_parts().values():
        for spec in specs:
            assert f"\n### {spec.name}\n" in text
            assert "Formula::" in (spec.fn.__doc__ or ""), f"{spec.name} has no formula"
    assert "| `dual_clip` | float \\| None | `null` | > 1 |" in text
    assert "Zheng et al. 2025" in text and "MiniMax-M1" in text  # papers come from the docstrings


def test_plugins_are_left_out_of_the_checked_in_page() -> None:
    load_plugin(str(PLUGIN))
    assert "tanh_ratio" not in render_online_parts_markdown()
    assert "### tanh_ratio" in render_online_parts_markdown({"policy loss": [POLICY_LOSSES.get("tanh_ratio")]})
