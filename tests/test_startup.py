"""The commands that need no model start without torch: `--help`, `losses` and `validate` (no plugins).

Each runs in a fresh interpreter, which then reports the heavy packages it imported. This asserts what
was imported, not a time: the import is what costs seconds (see docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "safetensors", "numpy", "datasets")

# Runs the CLI in-process, then prints which of HEAVY it imported.
_PROBE = """
import contextlib, io, json, sys
from alignkit.cli import main
HEAVY = {heavy}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:  # --help
        code = stop.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("{heavy}", repr(HEAVY))


def imported_by(*argv: str) -> dict:
    """``{"code": exit code, "heavy": heavy packages imported}`` of ``alignkit ARGV`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("argv", [("--help",), ("losses",), ("losses", "--markdown")], ids=" ".join)
def test_help_and_losses_import_no_torch(argv):
    assert imported_by(*argv) == {"code": 0, "heavy": []}


@pytest.mark.parametrize("recipe", SHIPPED)
def test_validating_a_shipped_recipe_imports_no_torch(recipe):
    assert imported_by("validate", recipe) == {"code": 0, "heavy": []}


def test_the_probe_sees_an_import_of_torch(tmp_path):
    """The check can fail: a plugin that imports torch is reported."""
    plugin = tmp_path / "heavy_plugin.py"
    plugin.write_text("import torch  # noqa: F401\n")
    assert "torch" in imported_by("losses", "--plugin", str(plugin))["heavy"]
