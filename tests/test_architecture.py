"""The layer picture of docs/architecture.md, enforced: every import points down, and nothing cycles.

Layers, lowest first. A module may import its own package and packages of lower layers only (imports
under ``if TYPE_CHECKING:`` and inside functions count too: they are the same dependency for a reader).
``alignkit/__init__.py`` re-exports the public names and is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "alignkit"

LAYERS: list[set[str]] = [
    {"registry", "cache", "hub", "schema_docs", "plugins", "config_base", "timing", "progress"},
    {"losses", "models", "peft"},
    {"data"},
    {"eval", "train", "report"},
    {"online"},
    {"recipe"},
    {"workflow"},
    {"commands"},
    {"cli"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alignkit"


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imports_of(path: Path) -> list[tuple[str, int]]:
    """``(imported alignkit module, line)`` for every absolute import of alignkit in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out += [(name, node.lineno) for name in names if name == "alignkit" or name.startswith("alignkit.")]
    return out


def upward_imports(root: Path = ROOT) -> list[str]:
    """Every import that points to a higher layer or sideways to another package of the same layer."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = _package(_module_name(path, root))
        if here == "alignkit":  # the package's own __init__: the public names, re-exported from every layer
            continue
        for target, line in imports_of(path):
            there = _package(target)
            if there == here:
                continue
            if here not in RANK or there not in RANK:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here} -> {there} (package not in LAYERS)")
            elif RANK[there] >= RANK[here]:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here} (layer {RANK[here]}) imports "
                                f"{there} (layer {RANK[there]})")
    return problems


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Strongly connected groups of modules (any import, also inside functions) of more than one module."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {m: {t for t, _ in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def test_every_import_points_down_a_layer():
    assert upward_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_checks_catch_a_planted_upward_import_and_cycle(tmp_path):
    pkg = tmp_path / "alignkit"
    for name, text in {
        "losses/__init__.py": "",
        "losses/a.py": "from alignkit.losses.b import x\n",
        "losses/b.py": "def f():\n    from alignkit.losses.a import y\n",
        "data/__init__.py": "",
        "data/c.py": "from alignkit.commands.run import run_recipe\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert upward_imports(pkg) == ["alignkit/data/c.py:1: data (layer 2) imports commands (layer 7)"]
    assert import_cycles(pkg) == [["alignkit.losses.a", "alignkit.losses.b"]]


@pytest.mark.parametrize("package", sorted(RANK))
def test_every_layer_package_exists(package):
    assert (ROOT / package).is_dir() or (ROOT / f"{package}.py").is_file()


def test_the_command_line_loads_no_torch_until_a_command_needs_it():
    """`alignkit --help` and argument errors stay instant: the CLI and the package root import lazily."""
    import subprocess
    import sys

    code = ("import sys, alignkit, alignkit.cli; alignkit.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from alignkit import register_loss, LossOutput; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
