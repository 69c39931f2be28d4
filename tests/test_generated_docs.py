"""docs/recipe.md is generated from the recipe schema; fail when the checked-in page drifts."""

from __future__ import annotations

from pathlib import Path

from alignkit.recipe.docs import render_recipe_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_recipe_md_matches_the_schema():
    assert (DOCS / "recipe.md").read_text() == render_recipe_markdown(), (
        "docs/recipe.md is out of date with the recipe schema; run: python scripts/gen_docs.py"
    )


def test_recipe_md_documents_every_section():
    text = render_recipe_markdown()
    for heading in ("## `model`", "## `reference`", "## `adapter` with `kind: lora`",
                    "## `data.source` with `kind: hh_rlhf`", "## `data.source` with `kind: sentiment`",
                    "## `train`", "## `train.early_stopping`", "## `sft`", "## `eval`"):
        assert heading in text, heading
    assert "| `max_grad_norm` |" in text


def test_generated_pages_show_no_internal_placeholders():
    """A value pydantic uses internally (PydanticUndefined, <factory>, a class repr) is never shown as a value."""
    import re

    from alignkit.losses.docs import render_losses_markdown

    for name, text in (("recipe.md", render_recipe_markdown()), ("losses.md", render_losses_markdown())):
        leaks = re.findall(r"PydanticUndefined|<factory>|<class '|object at 0x", text)
        assert not leaks, f"{name} shows {sorted(set(leaks))}"
    assert "## `eval.judge` with `kind: local`" in render_recipe_markdown()
