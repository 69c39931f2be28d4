"""Packages that re-export lazily (``alignkit.lazy.lazy_exports``) name the same things three times: in
their ``TYPE_CHECKING`` imports (for the type checker), in the map the loader reads, and in ``__all__``.
These tests keep the three equal and check that each name loads and is the submodule's own object.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from alignkit.lazy import lazy_exports, lazy_module

ROOT = Path(__file__).resolve().parents[1] / "alignkit"


def _lazy_packages() -> list[Path]:
    return sorted(p for p in ROOT.rglob("__init__.py") if "lazy_exports(" in p.read_text())


def declared(init: Path, root: Path = ROOT) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(name -> module) from the TYPE_CHECKING imports, (name -> module) from the map, and ``__all__``."""
    tree = ast.parse(init.read_text())
    package = ".".join(init.parent.relative_to(root.parent).parts)
    typed: dict[str, str] = {}
    mapped: dict[str, str] = {}
    public: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module, ast.unparse(imp)
                typed.update({a.name: imp.module for a in imp.names})
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            public = set(ast.literal_eval(node.value))
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__getattr__":
            assert isinstance(node.value, ast.Call)
            table = ast.literal_eval(node.value.args[1])
            mapped = {name: f"{package}.{module}" for module, names in table.items() for name in names}
    return typed, mapped, public


@pytest.mark.parametrize("init", _lazy_packages(), ids=lambda p: str(p.parent.relative_to(ROOT.parent)))
def test_the_three_lists_agree_and_every_name_loads(init):
    typed, mapped, public = declared(init)
    assert typed == mapped
    assert set(mapped) == public
    package = importlib.import_module(".".join(init.parent.relative_to(ROOT.parent).parts))
    for name, module in mapped.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name)


def test_the_check_sees_a_name_missing_from_the_map(tmp_path):
    init = tmp_path / "alignkit" / "pkg" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text("if TYPE_CHECKING:\n    from alignkit.pkg.a import f, g\n__all__ = ['f', 'g']\n"
                    "__getattr__ = lazy_exports(__name__, {'a': ('f',)})\n")
    typed, mapped, public = declared(init, tmp_path / "alignkit")
    assert typed != mapped and set(mapped) != public


def test_lazy_exports_imports_on_first_use_and_refuses_unknown_names():
    get = lazy_exports("alignkit.eval", {"stats": ("bootstrap_ci",)}, on_first_use=("config",))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        get("nope")
    from alignkit.eval.stats import bootstrap_ci

    assert get("bootstrap_ci") is bootstrap_ci
    assert "alignkit.eval.config" in sys.modules


def test_lazy_module_reads_through_and_caches():
    json_module = lazy_module("json")
    assert json_module.dumps([1]) == "[1]"
    assert "dumps" in vars(json_module)  # the second read is a plain attribute
