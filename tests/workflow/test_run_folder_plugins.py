"""A run folder is data: `eval` imports only the plugins named on its command line, and a run records the
exact plugin files (with their SHA-256) it used."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_recipes import tiny_jsonl_recipe

from alignkit import plugins
from alignkit.cli import main
from alignkit.losses import LOSSES
from alignkit.recipe import RecipeError, load_recipe
from alignkit.workflow.model_io import load_run_model

JUDGE = ["eval.judge.kind=reward", "eval.judge.reward=vader_sentiment", "eval.num_prompts=2", "eval.max_new_tokens=3",
         "eval.batch_size=2", "eval.baselines=[chosen]"]

PLUGIN = """
from alignkit.losses import register_loss
from alignkit.losses.dpo import DPOConfig, dpo

register_loss("{name}", config=DPOConfig, needs_reference=True)(dpo)
"""


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr without whitespace (the terminal wraps long paths)."""
    return "".join(capsys.readouterr().err.split())


@pytest.fixture
def plugin_loss(tmp_path: Path):
    """A plugin file registering a loss of its own; afterwards the process is as if it never ran."""
    name = "folder_plugin_dpo"
    path = tmp_path / "plugin_dir" / "my_dpo.py"
    path.parent.mkdir()
    path.write_text(PLUGIN.format(name=name))
    yield path, name
    LOSSES.remove(name)
    plugins._LOADED_FILES.pop(path.resolve(), None)


def _forget(path: Path, name: str) -> None:
    """What a new process knows: the plugin's loss unregistered, its file not imported."""
    LOSSES.remove(name)
    plugins._LOADED_FILES.pop(path.resolve(), None)


def test_a_plugin_loss_run_records_its_plugin_and_evaluates_with_plugin(plugin_loss, tmp_path, capsys):
    path, name = plugin_loss
    recipe = tiny_jsonl_recipe(tmp_path)
    assert main(["run", str(recipe), "--plugin", str(path), f"loss.name={name}"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert saved["plugins"] == [{"path": str(path.resolve()), "sha256": digest}]
    capsys.readouterr()

    _forget(path, name)
    assert main(["eval", str(tmp_path / "run"), *JUDGE]) == 2
    err = _err(capsys)
    assert f"unknownloss'{name}'" in err and str(path.resolve()) in err and digest in err and "--plugin" in err
    assert name not in LOSSES  # the recorded plugin was not imported from the folder

    assert main(["eval", str(tmp_path / "run"), "--plugin", str(path), *JUDGE]) == 0

    # The saved recipe run again imports the same file, and refuses it once it changed.
    _forget(path, name)
    assert load_recipe(tmp_path / "run" / "recipe.yaml", [f"output_dir={tmp_path / 'again'}"]).loss["name"] == name
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(RecipeError, match=f"changed since the run used it \\(sha256 {digest} then"):
        load_recipe(tmp_path / "run" / "recipe.yaml", [f"output_dir={tmp_path / 'again'}"])


def test_eval_never_imports_the_plugins_a_run_folder_lists(tmp_path, capsys):
    recipe = tiny_jsonl_recipe(tmp_path)
    assert main(["run", str(recipe), "train.max_steps=1"]) == 0
    marker = tmp_path / "executed"
    planted = tmp_path / "run" / "helpers.py"
    planted.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    saved = tmp_path / "run" / "recipe.yaml"
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()
    text = saved.read_text()
    assert "plugins: []" in text
    for listed in ("- helpers.py", f"- {{path: {planted}, sha256: {digest}}}"):
        saved.write_text(text.replace("plugins: []", f"plugins:\n{listed}"))
        assert main(["eval", str(tmp_path / "run"), *JUDGE]) == 0
        load_run_model(tmp_path / "run")  # what `serve RUN` loads: the model alone, no recipe, no plugin
        assert not marker.exists()
    shutil.rmtree(tmp_path / "run")
