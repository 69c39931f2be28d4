"""Load user extensions (their own losses, data sources, ...) from a .py file or an importable module.

A plugin is ordinary Python whose import registers things, e.g. a file with ``@register_loss``. A recipe
lists them as ``plugins: [my_losses.py]`` (paths relative to the recipe's folder); the CLI takes
``--plugin``. Loading the same plugin twice is a no-op, so nothing is registered twice.

A plugin is code: importing it runs it, with the user's rights. A recipe from someone else runs their
plugins too, so read them first (``alignkit validate`` names every plugin it imported). A plugin that
fails, or calls ``sys.exit`` while being imported, becomes a :class:`PluginError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

__all__ = ["PluginError", "file_sha256", "load_plugin", "load_plugins", "plugin_record"]

# Resolved file path -> its module, so a file is executed once however often it is named.
_LOADED_FILES: dict[Path, ModuleType] = {}


class PluginError(ImportError):
    """A plugin that does not exist or fails to import; the message names the spec."""


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (how a saved recipe names the exact plugin file a run used)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plugin_record(module: ModuleType) -> dict[str, str] | str:
    """What a run records of a plugin it imported: ``{path, sha256}`` of a file, the name of a module."""
    for path, loaded in _LOADED_FILES.items():
        if loaded is module:
            return {"path": str(path), "sha256": file_sha256(path)}
    return module.__name__


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _module_name(path: Path) -> str:
    # Unique per path (two "my_losses.py" in different folders must not collide), valid identifier.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"alignkit_plugin_{stem}_{digest}"


def _load_file(spec: str, base_dir: Path | None) -> ModuleType:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if path in _LOADED_FILES:
        return _LOADED_FILES[path]
    if not path.is_file():
        raise PluginError(f"plugin {spec!r}: no such file: {path}")
    name = _module_name(path)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"plugin {spec!r}: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so dataclasses, pickling and relative lookups see it during import
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as err:
        sys.modules.pop(name, None)
        raise PluginError(f"plugin {spec!r} ({path}) called sys.exit({err.code!r}) while being imported") from None
    except Exception as err:
        sys.modules.pop(name, None)
        raise PluginError(f"plugin {spec!r} ({path}) failed to import: {type(err).__name__}: {err}") from err
    _LOADED_FILES[path] = module
    return module


def _load_module(spec: str) -> ModuleType:
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name is not None and (spec == err.name or spec.startswith(err.name + ".")):
            raise PluginError(f"plugin {spec!r}: no such .py file or importable module") from err
        raise PluginError(f"plugin {spec!r} failed to import: {type(err).__name__}: {err}") from err
    except SystemExit as err:
        raise PluginError(f"plugin {spec!r} called sys.exit({err.code!r}) while being imported") from None
    except Exception as err:
        raise PluginError(f"plugin {spec!r} failed to import: {type(err).__name__}: {err}") from err


def load_plugin(spec: str, base_dir: Path | None = None) -> ModuleType:
    """Import one plugin so that its registrations run.

    Args:
        spec: a path to a .py file (anything ending in .py or containing a slash), relative to
            ``base_dir``, or a dotted module name importable from ``sys.path``.
        base_dir: the folder relative file paths start from (a recipe's folder); default: the
            current directory.

    Returns:
        The imported module (the same object when it was loaded before).

    Raises:
        PluginError: naming the spec, when the file or module does not exist or its import fails.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugin {spec!r}: expected a .py path or a module name")
    spec = spec.strip()
    return _load_file(spec, base_dir) if _is_path(spec) else _load_module(spec)


def load_plugins(specs: Iterable[str], base_dir: Path | None = None) -> list[ModuleType]:
    """Import each plugin in order (see :func:`load_plugin`); idempotent.

    Args:
        specs: .py paths or module names.
        base_dir: the folder relative file paths start from; default: the current directory.

    Returns:
        The imported modules, in the order given.
    """
    return [load_plugin(spec, base_dir) for spec in specs]
