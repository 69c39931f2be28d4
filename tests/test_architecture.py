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
    {"registry", "cache", "hub", "schema_docs", "plugins", "config_base", "timing", "lazy", "progress",
     "jsonio"},
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


# Packages a package may not import although the layers would allow it: training (offline and online)
# does not reach into held-out evaluation; what both need (KL, log-probs of completions, padding) is models'.
FORBIDDEN = {("train", "eval"), ("online", "eval")}


def forbidden_imports(root: Path = ROOT) -> list[str]:
    """Every import of a package that ``FORBIDDEN`` keeps its importer from."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = _package(_module_name(path, root))
        problems += [f"{path.relative_to(root.parent)}:{line}: {here} imports {target}"
                     for target, line in imports_of(path) if (here, _package(target)) in FORBIDDEN]
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


def test_training_does_not_import_evaluation():
    assert forbidden_imports() == []


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
        "online/d.py": "def f():\n    from alignkit.eval.kl import sequence_kl\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert upward_imports(pkg) == ["alignkit/data/c.py:1: data (layer 2) imports commands (layer 7)"]
    assert forbidden_imports(pkg) == ["alignkit/online/d.py:2: online imports alignkit.eval.kl"]
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
            "from alignkit import register_loss, LossOutput; assert callable(register_loss)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# One home for each helper that was once written several times: padding rows into a batch, and the KL
# estimators. A second copy elsewhere is a function whose name starts with "pad" (outside models/padding.py)
# or one that computes k3's exp(-d) + d - 1 as expm1(..) +/- .. (outside models/kl_estimators.py).
HELPER_HOMES = {"pad": "models/padding.py", "k3": "models/kl_estimators.py"}


def duplicated_helpers(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.FunctionDef) and node.name.lstrip("_").startswith("pad")
                    and where != HELPER_HOMES["pad"]):
                found.append(f"alignkit/{where}:{node.lineno}: padding helper {node.name}")
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub)
                    and isinstance(node.left, ast.Call) and isinstance(node.left.func, ast.Attribute)
                    and node.left.func.attr == "expm1" and where != HELPER_HOMES["k3"]):
                found.append(f"alignkit/{where}:{node.lineno}: a KL estimator outside models/kl_estimators.py")
    return found


def test_padding_and_kl_estimators_each_have_one_home():
    assert duplicated_helpers() == []


def test_the_check_finds_a_planted_second_padding_helper_and_k3(tmp_path):
    (tmp_path / "online").mkdir()
    (tmp_path / "online" / "a.py").write_text("def pad_rows(rows):\n    return rows\n")
    (tmp_path / "online" / "b.py").write_text("import torch\ndef k3(d):\n    return torch.expm1(-d) + d\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "padding.py").write_text("def pad_token_rows(rows):\n    return rows\n")
    assert duplicated_helpers(tmp_path) == ["alignkit/online/a.py:1: padding helper pad_rows",
                                            "alignkit/online/b.py:3: a KL estimator outside models/kl_estimators.py"]
