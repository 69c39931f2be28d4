"""docs/architecture.md's table "to add X, touch these files" stays true: every file it names exists and
every registry it names is a ``Registry`` of alignkit."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from alignkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
REQUIRED = ("a loss", "a batch kind", "a data source", "an online prompt source", "a judge", "a reward")


def table_rows(text: str) -> dict[str, list[str]]:
    """``to add`` -> the row's cells, for the table under "Where does my change go?"."""
    section = text.split("## Where does my change go?", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[0] not in ("to add", "---"):
            rows[re.sub(r"\s*\(.*", "", cells[0])] = cells
    return rows


def named_paths(cell: str) -> list[str]:
    """The file paths a cell names in backticks (placeholders such as ``<kind>`` left out)."""
    return [t for t in re.findall(r"`([^`\s]+)`", cell)
            if ("/" in t or t.endswith(".py")) and "<" not in t and not t.startswith("alignkit.")]


def missing_files(rows: dict[str, list[str]], root: Path = ROOT) -> list[str]:
    out = []
    for name, cells in rows.items():
        for path in named_paths(cells[1]) + named_paths(cells[3]):
            full = root / path if path.startswith(("tests/", "docs/")) else root / "alignkit" / path
            if not full.exists():
                out.append(f"{name}: {path}")
    return out


def named_registries(cell: str) -> list[str]:
    return re.findall(r"`(alignkit(?:\.\w+)+\.[A-Z_]+)`", cell)


ROWS = table_rows(DOC.read_text())


def test_the_table_has_a_row_for_each_extension():
    assert set(REQUIRED) <= set(ROWS)


def test_every_file_the_table_names_exists():
    assert missing_files(ROWS) == []


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_registry_the_table_names_is_one(name):
    for dotted in named_registries(ROWS[name][2]):
        module, _, attr = dotted.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attr), Registry), dotted


def test_the_check_sees_a_file_that_is_not_there():
    rows = table_rows("## Where does my change go?\n\n| to add | files | reg | tests |\n|---|---|---|---|\n"
                      "| a thing | `losses/base.py`, `losses/nowhere.py` | none | `tests/no_such_test.py` |\n")
    assert missing_files(rows) == ["a thing: losses/nowhere.py", "a thing: tests/no_such_test.py"]
    assert named_registries("`alignkit.losses.base.LOSSES`, with `@register_loss`") == ["alignkit.losses.base.LOSSES"]
