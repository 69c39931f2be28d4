"""docs/extending.md: every Python example runs as written, each in a fresh interpreter (its registrations
start from the built-ins), and the names the page imports from ``alignkit`` are its public extension API.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import alignkit

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


BLOCKS = python_blocks(PAGE.read_text())


def test_the_page_has_an_example_for_each_registry():
    for decorator in ("register_loss", "register_reward", "register_source", "register_judge"):
        assert any(f"@{decorator}(" in block for block in BLOCKS), decorator


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_example_runs(index):
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_name_the_page_imports_from_alignkit_is_public():
    names = {n.strip() for block in BLOCKS for line in re.findall(r"^from alignkit import (.+)$", block, re.M)
             for n in line.split(",")}
    assert names and names <= set(alignkit.__all__)
    assert all(getattr(alignkit, name) is not None for name in names)


def test_a_broken_example_fails():
    """The runner reports a failing block (the check can fail)."""
    done = subprocess.run([sys.executable, "-c", "from alignkit import get_reward\nget_reward('nope')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown reward function 'nope'" in done.stderr
