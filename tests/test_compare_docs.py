"""The objective pages cover every built-in loss and parameter; the shipped comparison recipe plans cleanly."""

from __future__ import annotations

import re
from pathlib import Path

from alignkit.commands.compare import plan_comparison
from alignkit.losses.docs import builtin_losses

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "objectives").glob("*.md"))


def _headed(text: str) -> set[str]:
    """Loss names in the page's ``###`` headings (a heading may list several)."""
    return {name for line in text.splitlines() if line.startswith("### ") for name in re.findall(r"`(\w+)`", line)}


def test_every_builtin_loss_has_one_objective_page_naming_all_its_parameters():
    pages = {page.name: page.read_text() for page in PAGES}
    for spec in builtin_losses():
        owners = [name for name, text in pages.items() if spec.name in _headed(text)]
        assert len(owners) == 1, f"loss {spec.name} is documented in {owners or 'no page'} of docs/objectives"
        text = pages[owners[0]]
        missing = [p for p in spec.config.model_fields if f"`{p}`" not in text]
        assert not missing, f"docs/objectives/{owners[0]} does not describe {spec.name}'s {missing}"


def test_comparing_guide_links_every_objective_page():
    guide = (ROOT / "docs" / "comparing.md").read_text()
    for page in PAGES:
        assert f"(objectives/{page.name})" in guide


def test_shipped_offline_comparison_plans_five_runs_that_differ_only_in_the_loss():
    out, plans = plan_comparison(ROOT / "recipes" / "compare_smollm2_sentiment.yaml",
                                 ["dpo", "ipo", "slic_hf", "simpo", "orpo"])
    assert out == Path("runs/compare_smollm2_sentiment")
    assert [p.recipe.loss for p in plans] == [{"name": n} for n in ("dpo", "ipo", "slic_hf", "simpo", "orpo")]
    for section in ("train", "data", "model", "adapter", "reference", "eval"):  # one protocol for all five
        assert len({getattr(p.recipe, section).model_dump_json() for p in plans}) == 1, section
