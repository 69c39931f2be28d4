"""docs/losses.md is generated from the registry; fail when the checked-in file drifts."""

from __future__ import annotations

from pathlib import Path

from alignkit.losses.docs import REGENERATE, builtin_losses, loss_parameters, render_losses_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def test_losses_md_matches_the_registry() -> None:
    expected = render_losses_markdown()
    actual = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert actual == expected, f"docs/losses.md is out of date with the loss registry; run: {REGENERATE}"


def test_rendering_documents_every_builtin_and_parameter() -> None:
    text = render_losses_markdown()
    for spec in builtin_losses():
        assert f"\n## {spec.name}\n" in text
        for p in loss_parameters(spec):
            escaped_type = p.type.replace("|", "\\|")
            assert f"| `{p.name}` | {escaped_type} | `{p.default}` |" in text
    assert "| `label_smoothing` | float | `0.0` | >= 0, < 0.5 |" in text
    assert "| `gamma` | float \\| None | `null` | >= 0 |" in text
    assert "arXiv:2305.18290" in text  # formulas and papers come from the docstrings


def test_plugins_are_left_out_of_the_checked_in_docs() -> None:
    import loss_cases  # noqa: F401  (loads the example plugin)

    assert "sigmoid_hinge" not in render_losses_markdown()
    from alignkit.losses import get_loss

    assert "## sigmoid_hinge" in render_losses_markdown([get_loss("sigmoid_hinge")])
