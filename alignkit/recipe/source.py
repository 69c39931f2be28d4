"""Reading a recipe's YAML safely, and placing problems in it (``file:line: path: message``).

A recipe is text written by hand or handed over by someone else, so the parser refuses what a YAML
parser would otherwise do silently or forever: duplicate keys (the last one wins), alias bombs (a few
hundred bytes that expand to billions of values), self-referencing aliases, nesting deep enough to
exhaust the stack, arbitrary tags, and text that is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

__all__ = [
    "MAX_ALIAS_EXPANSION",
    "MAX_YAML_DEPTH",
    "Location",
    "Problem",
    "RecipeError",
    "RecipeFile",
    "describe",
    "line_map",
    "line_of",
    "mark_overrides",
    "parse_yaml",
    "path_str",
    "read_text",
]

# A place in a recipe (keys and list indices from the top) and what is wrong there.
Location = tuple[str | int, ...]
Problem = tuple[Location, str]

# Limits of a recipe's YAML: a recipe is a few hundred values a few levels deep. Aliases (*name) may
# repeat an anchored (&name) value, but not expand 400 bytes into billions of values.
MAX_YAML_DEPTH = 50
MAX_ALIAS_EXPANSION = 10_000


class RecipeError(ValueError):
    """A recipe that cannot be used; the message lists every problem with its YAML path and line."""


def path_str(loc: Sequence[Any]) -> str:
    """``("loss", 1, "beta")`` -> ``loss[1].beta``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _duplicate_keys(node: yaml.MappingNode) -> list[tuple[int, str]]:
    """(line, message) for each key of the mapping written a second time."""
    seen: dict[tuple[str, str], int] = {}
    found = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line, name = key.start_mark.line + 1, (key.tag, key.value)
        if name in seen:
            found.append((line, f"duplicate key {key.value!r} (first at line {seen[name]}); YAML would silently "
                          "keep only the last one"))
        else:
            seen[name] = line
    return found


def _check_nodes(root: yaml.Node, what: str) -> None:
    """Refuse alias bombs, self-referencing aliases, deep nesting and duplicate keys before constructing.

    One pass over the composed graph, without recursion: an alias is the same node object as its anchor,
    so the expanded size is computed per distinct node.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    duplicates: list[tuple[int, str]] = []
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            state[key] = 2
            continue
        if state.get(key) == 2:
            continue
        if state.get(key) == 1:
            raise RecipeError(f"{what}: an alias (*name) refers to a value that contains it; a recipe cannot be "
                              "infinitely nested")
        state[key] = 1
        if isinstance(node, yaml.MappingNode):
            duplicates += _duplicate_keys(node)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if state.get(id(kid)) != 2)
    if duplicates:
        raise RecipeError("\n".join(f"{what}:{line}: {msg}" for line, msg in sorted(set(duplicates))))
    if depth[id(root)] > MAX_YAML_DEPTH:
        raise RecipeError(f"{what}: nested {depth[id(root)]} levels deep; a recipe has at most {MAX_YAML_DEPTH}")
    if size[id(root)] > len(size) + MAX_ALIAS_EXPANSION:
        raise RecipeError(f"{what}: its aliases (*name) expand to {size[id(root)]:,} values, more than "
                          f"{MAX_ALIAS_EXPANSION:,} beyond what is written; write the values out")


def parse_yaml(text: str, what: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely: the value and its node graph (for line numbers).

    Safe against what a hostile or broken file can do to a YAML parser: arbitrary tags (only plain
    values are built), alias bombs, self-referencing aliases, nesting deep enough to exhaust the stack,
    and duplicate keys (which YAML parsers resolve silently, last one wins).

    Args:
        text: the YAML text.
        what: names the text in error messages (a file name, an override).

    Raises:
        RecipeError: naming ``what`` (and the line, where there is one).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_nodes(node, what)
        return loader.construct_document(node), node
    except RecursionError:
        raise RecipeError(f"{what}: nested too deeply; a recipe has at most {MAX_YAML_DEPTH} levels") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{what}: not valid YAML:\n{err}") from None
    finally:
        loader.dispose()


def line_map(node: yaml.Node | None, path: tuple[Any, ...] = (), lines: dict | None = None) -> dict:
    """Map every YAML path (tuple of keys / indices) to its 1-based line number."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            lines[sub] = key.start_mark.line + 1
            line_map(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            item = (*path, i)
            lines[item] = value.start_mark.line + 1
            line_map(value, item, lines)
    return lines


def mark_overrides(lines: dict, overrides: Sequence[tuple[tuple[Any, ...], str]]) -> dict:
    """``lines`` with each overridden path (and everything under it) placed at its override instead of the
    file: ``((path, "loss.beta=-1"), ...)`` in the order applied. A problem there then names the override by
    its key only (``override loss.beta``): the value may be a secret typed into the wrong field (an API key
    given as ``eval.judge.api_key_env``), and an error message must never echo it."""
    for path, item in overrides:
        for key in [k for k in lines if k[: len(path)] == path]:
            del lines[key]
        lines[path] = f"override {item.split('=', 1)[0].strip()}"
    return lines


def _place(loc: Sequence[Any], lines: dict) -> int | str | None:
    """Where ``loc`` was set: its own line, else the nearest section above it that the file writes; a section
    the file does not write but an override sets something inside is that override's (``online.policy_loss``
    made by ``online.policy_loss.clip_low=-1`` lacks its ``name`` because of the override, not line 30)."""
    for n in range(len(loc), 0, -1):
        prefix = tuple(loc[:n])
        place = lines.get(prefix)
        if place is not None:
            return cast("int | str", place)
        if below := [p for key, p in lines.items() if isinstance(p, str) and key[:n] == prefix]:
            return below[0]
    return None


def line_of(loc: Sequence[Any], lines: dict) -> int | None:
    """The line of ``loc`` in the file, or of the closest section above it that is written there (None
    where that is a command-line override, see :func:`mark_overrides`)."""
    place = _place(loc, lines)
    return place if isinstance(place, int) else None


def describe(loc: Sequence[Any], message: str, lines: dict, source: str) -> str:
    """One problem as ``file:line: path: message`` (no ``file:line`` for what is not in the file), or as
    ``override key=value: path: message`` for what a command-line override set."""
    place = _place(loc, lines)
    if isinstance(place, str):
        return f"{place}: {path_str(loc)}: {message}"
    where = f"{source}:{place}: " if place is not None and source else ""
    return f"{where}{path_str(loc)}: {message}"


def read_text(path: Path) -> str:
    """The text of a recipe file; a RecipeError naming it when it is missing, unreadable or not UTF-8."""
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    if not path.is_file():
        raise RecipeError(f"{path}: not a file (a recipe is one YAML file)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise RecipeError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not a UTF-8 text file (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "a recipe is YAML text saved as UTF-8") from None


@dataclass(frozen=True)
class RecipeFile:
    """A recipe file read and parsed once: every step that needs its YAML (is it online? load it) reads this.

    Attributes:
        path: the file.
        data: the parsed YAML (not yet overridden or validated).
        node: its node graph, for line numbers.
    """

    path: Path
    data: Any
    node: yaml.Node | None

    @classmethod
    def read(cls, path: str | Path | RecipeFile) -> RecipeFile:
        """Parse the file at ``path`` (a RecipeFile is returned as it is).

        Raises:
            RecipeError: missing or unreadable file, invalid or unsafe YAML (see :func:`parse_yaml`).
        """
        if isinstance(path, RecipeFile):
            return path
        path = Path(path)
        return cls(path, *parse_yaml(read_text(path), str(path)))

    @property
    def is_online(self) -> bool:
        """Whether the file is a mapping with a top-level ``online:`` key (an online recipe)."""
        return isinstance(self.data, dict) and "online" in self.data
