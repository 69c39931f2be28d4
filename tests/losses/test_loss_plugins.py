"""Plugins: a user's .py file or module is imported once, and its losses registered once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from alignkit.losses import LOSSES, get_loss
from alignkit.plugins import PluginError, load_plugin, load_plugins

PLUGIN_SOURCE = """
from pydantic import Field
from alignkit.losses import LossConfig, LossOutput, register_loss

class Cfg(LossConfig):
    scale: float = Field(1.0, gt=0, description="scale")

@register_loss("{name}", config=Cfg)
def fn(stats, cfg):
    \"\"\"Scaled token-mean NLL of the chosen response.\"\"\"
    nll = -stats.policy_chosen_logps / stats.chosen_lengths
    return LossOutput(cfg.scale * nll, -nll.detach(), -nll.detach())
"""


@pytest.fixture
def plugin_file(tmp_path: Path, request: pytest.FixtureRequest):
    """A plugin file registering a loss with a name unique to the test; unregistered afterwards."""
    name = f"tmp_plugin_{request.node.name}".replace("[", "_").replace("]", "_")
    path = tmp_path / "plugins" / "extra_losses.py"
    path.parent.mkdir()
    path.write_text(PLUGIN_SOURCE.format(name=name))
    yield path, name
    LOSSES.remove(name)


def test_file_relative_to_base_dir_is_loaded_once(plugin_file) -> None:
    path, name = plugin_file
    first = load_plugins(["extra_losses.py"], base_dir=path.parent)
    assert name in LOSSES
    assert get_loss(name).description == "Scaled token-mean NLL of the chosen response."
    # Again, by the same relative path and by the absolute one: no re-registration, no error.
    again = load_plugins(["extra_losses.py", str(path)], base_dir=path.parent)
    assert again == [first[0], first[0]]


def test_relative_path_defaults_to_the_current_directory(plugin_file, monkeypatch) -> None:
    path, name = plugin_file
    monkeypatch.chdir(path.parent.parent)
    load_plugin("plugins/extra_losses.py")
    assert name in LOSSES


def test_module_name(tmp_path: Path, monkeypatch) -> None:
    name = "tmp_plugin_module_loss"
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "losses.py").write_text(PLUGIN_SOURCE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = load_plugin("my_pkg.losses")
        assert load_plugin("my_pkg.losses") is module
        assert name in LOSSES
    finally:
        LOSSES.remove(name)
        sys.modules.pop("my_pkg.losses", None)
        sys.modules.pop("my_pkg", None)


def test_missing_file_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"plugin 'nope\.py': no such file: .*nope\.py"):
        load_plugins(["nope.py"], base_dir=tmp_path)


def test_missing_module_names_the_spec() -> None:
    with pytest.raises(PluginError, match=r"plugin 'no_such_pkg_xyz\.losses': no such \.py file or importable module"):
        load_plugin("no_such_pkg_xyz.losses")


def test_failing_import_names_the_spec_and_the_cause(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import math\nx = 1 +\n")
    with pytest.raises(PluginError, match=r"plugin 'broken\.py' \(.*broken\.py\) failed to import: SyntaxError"):
        load_plugin("broken.py", base_dir=tmp_path)
    (tmp_path / "raises.py").write_text("raise RuntimeError('bad config')\n")
    with pytest.raises(PluginError, match=r"failed to import: RuntimeError: bad config"):
        load_plugin("raises.py", base_dir=tmp_path)
    # A failed file is not remembered as loaded: after a fix it loads.
    (tmp_path / "raises.py").write_text("VALUE = 3\n")
    assert load_plugin("raises.py", base_dir=tmp_path).VALUE == 3


def test_a_plugin_cannot_replace_a_builtin(tmp_path: Path) -> None:
    (tmp_path / "clash.py").write_text(PLUGIN_SOURCE.format(name="dpo"))
    with pytest.raises(PluginError, match=r"plugin 'clash\.py'.*'dpo' is already registered"):
        load_plugin("clash.py", base_dir=tmp_path)
    assert get_loss("dpo").fn.__module__ == "alignkit.losses.dpo"


def test_same_file_name_in_two_folders_are_two_plugins(tmp_path: Path) -> None:
    names = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        name = f"tmp_plugin_folder_{folder}"
        (tmp_path / folder / "losses.py").write_text(PLUGIN_SOURCE.format(name=name))
        names.append(name)
    try:
        mods = load_plugins(["a/losses.py", "b/losses.py"], base_dir=tmp_path)
        assert mods[0] is not mods[1] and all(n in LOSSES for n in names)
    finally:
        for n in names:
            LOSSES.remove(n)
